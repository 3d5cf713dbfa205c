"""ppo: GAE, KL-shaped rewards and whitening against a hand computation; a run with a reward
model's score head (and one with a verifiable reward) trains, logs mean reward and saves."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rung_rlhf.ppo import gae, shaped_rewards, whiten


def test_gae_equals_hand_computation():
    # Row 0: prompt positions 0-1 (not predicted), a 3-token completion at 2-4, padding at 5.
    # Row 1: a 2-token completion at 1-2.
    mask = np.array([[0, 0, 1, 1, 1, 0], [0, 1, 1, 0, 0, 0]], bool)
    values = np.array([[9.0, 9.0, 0.5, -0.2, 0.3, 7.0], [9.0, 0.1, 0.4, 7.0, 7.0, 7.0]])
    old = np.array([[0.0, 0.0, -1.0, -2.0, -0.5, 0.0], [0.0, -1.5, -0.25, 0.0, 0.0, 0.0]])
    ref = np.array([[0.0, 0.0, -1.2, -1.5, -0.5, 0.0], [0.0, -1.0, -0.5, 0.0, 0.0, 0.0]])
    scores, beta, gamma, lam = np.array([2.0, -1.0]), 0.1, 0.9, 0.8
    rewards, kl = shaped_rewards(scores, old, ref, mask, beta)
    # by hand: r_t = -beta (old - ref), the score added at the last completion token
    r0 = [-0.1 * 0.2, -0.1 * -0.5, -0.1 * 0.0 + 2.0]
    r1 = [-0.1 * -0.5, -0.1 * 0.25 - 1.0]
    assert np.allclose(rewards[0, 2:5], r0) and np.allclose(rewards[1, 1:3], r1)
    assert np.allclose(kl, [0.2 - 0.5 + 0.0, -0.5 + 0.25])
    assert rewards[0, [0, 1, 5]].tolist() == [0, 0, 0]

    advantages, returns = gae(rewards, values, mask, gamma, lam)
    v0 = [0.5, -0.2, 0.3]
    d2 = r0[2] - v0[2]                      # the value after the last token is 0
    d1 = r0[1] + gamma * v0[2] - v0[1]
    d0 = r0[0] + gamma * v0[1] - v0[0]
    a2 = d2
    a1 = d1 + gamma * lam * a2
    a0 = d0 + gamma * lam * a1
    assert np.allclose(advantages[0, 2:5], [a0, a1, a2], atol=1e-6)
    assert np.allclose(returns[0, 2:5], [a0 + v0[0], a1 + v0[1], a2 + v0[2]], atol=1e-6)
    v1 = [0.1, 0.4]
    b1 = r1[1] - v1[1]
    b0 = r1[0] + gamma * v1[1] - v1[0] + gamma * lam * b1
    assert np.allclose(advantages[1, 1:3], [b0, b1], atol=1e-6)
    assert advantages[~mask].tolist() == [0.0] * int((~mask).sum())  # values outside never leak in

    white = whiten(advantages, mask)
    kept = advantages[mask]
    assert np.allclose(white[mask], (kept - kept.mean()) / np.sqrt(kept.var(ddof=1) + 1e-8), atol=1e-6)
    assert white[~mask].tolist() == [0.0] * int((~mask).sum())


# ---------------------------------------------------------------- runs

torch = pytest.importorskip("torch")
pytest.importorskip("rung_torch.engine")

from rung.config import make_config  # noqa: E402
from rung.runner import Run, build  # noqa: E402
from tests.rlhf.conftest import write_jsonl  # noqa: E402


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    import random

    rng = random.Random(1)
    rows = [{"prompt": f"{rng.randrange(10, 99)}+{rng.randrange(10, 99)}=", "reference": "0"} for _ in range(24)]
    folder = tmp_path_factory.mktemp("ppo_prompts")
    return write_jsonl(folder / "train.jsonl", rows[:20]), write_jsonl(folder / "eval.jsonl", rows[20:])


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory, tiny_model_dir):
    """A score head on the tiny model, saved as a transformers sequence classifier."""
    import rung

    backend = rung.backend("torch", model=str(tiny_model_dir), device="cpu", precision="fp32")
    heads = backend.score_heads()
    heads.add_score_head(seed=3)
    folder = tmp_path_factory.mktemp("reward_model")
    heads.save_scorer(folder, pad_token_id=257)
    if not (folder / "tokenizer.json").is_file():
        backend.tokenizer.save(folder)
    return folder


def ppo_run(out, model_dir, prompts, **trainer):
    config = make_config({
        "output_dir": str(out),
        "backend": {"name": "torch", "model": str(model_dir), "device": "cpu", "precision": "fp32"},
        "data": {"name": "prompts_jsonl", "path": str(prompts[0])},
        "trainer": {"name": "ppo", "steps": 4, "batch_size": 4, "max_completion_length": 4, "max_prompt_length": 24,
                    "max_length": 32, "chat_template": "plain", "learning_rate": 1e-2, "log_every": 1,
                    "eval_data": {"name": "prompts_jsonl", "path": str(prompts[1])}, "num_iterations": 2,
                    "resume": "never", **trainer},
        "logging": {"sinks": [{"name": "jsonl"}]},
    })
    run = Run(config)
    run.output_dir.mkdir(parents=True, exist_ok=True)
    result = build(run.plugins, "trainer", config.trainer).train(run)
    run.close()
    return result, [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_ppo_with_a_reward_model_trains_logs_and_saves(tmp_path, tiny_model_dir, reward_model_dir, prompts):
    result, metrics = ppo_run(tmp_path, tiny_model_dir, prompts,
                              reward_model={"name": "torch", "model": str(reward_model_dir), "device": "cpu",
                                            "precision": "fp32"})
    assert result.steps == 4
    logged = [m for m in metrics if "reward_mean" in m]
    assert len(logged) == 4
    for key in ("reward_reward_model", "policy_loss", "value_loss", "kl", "approx_kl", "clip_fraction"):
        assert key in logged[-1], key
    assert all(np.isfinite(m["loss"]) for m in logged)
    # num_iterations 2: the second step reuses the first's completions (same rewards), the third samples anew
    assert logged[0]["reward_mean"] == logged[1]["reward_mean"]
    assert logged[0]["approx_kl"] == 0.0 and logged[1]["approx_kl"] > 0.0  # the policy moved in between
    assert any("eval_reward" in m for m in metrics if m["step"] == 0)  # eval_on_start: the "before"
    assert "eval_reward_reward_model" in metrics[-1]
    assert (tmp_path / "model" / "model.safetensors").is_file()


def test_ppo_raises_a_verifiable_reward(tmp_path, tiny_model_dir, prompts):
    _, metrics = ppo_run(tmp_path, tiny_model_dir, prompts, steps=24, batch_size=16, beta=0.01, num_iterations=2,
                         learning_rate=2e-2, rewards=[{"name": "format_match", "pattern": r"[0-9][\s\S]*"}])
    rewards = [m["reward_mean"] for m in metrics if "reward_mean" in m]
    # A batch mean of 16 rewards near 0.1 has a std near 0.07, four batches' mean near 0.04: a
    # rise of 0.2 is several times what chance gives (the trajectory depends on the sampler's draws).
    assert np.mean(rewards[-4:]) > np.mean(rewards[:4]) + 0.2, rewards

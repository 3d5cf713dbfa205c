"""grpo: the loss of one batch against a hand computation (numpy, from separately computed
log-probs), normalisation by real completion tokens, and runs that learn, log, save and resume."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("rung_torch.engine")

import rung  # noqa: E402
from rung.decoding import Sampling  # noqa: E402
from rung.records import Message, RewardedPrompt  # noqa: E402
from rung_rlhf.grpo import GRPOLoss, group_advantages, loss_weights  # noqa: E402
from rung_rlhf.rollouts import Rewarder, RolloutStream  # noqa: E402
from rung_torch.modeling import forward_logits  # noqa: E402
from rung_torch.objectives import token_logprobs  # noqa: E402

EOS = 256
G = 3


def scripted(completions):
    """A stand-in sampler with the contract of `sample_tokens` that returns fixed completions,
    so the loss is checked on known tokens (sampling itself is tested where it lives)."""
    def sample(model, prompts, sampling):
        assert len(prompts) == len(completions)
        return [list(c) for c in completions]
    return sample


def logprobs_alone(model, prompt, completion):
    """log p(completion token | prompt + earlier tokens), the sequence run alone (numpy)."""
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = forward_logits(model, ids)[0].float()
    logp = torch.log_softmax(logits, -1)
    return np.array([float(logp[len(prompt) + i - 1, t]) for i, t in enumerate(completion)])


@pytest.fixture(scope="module")
def models(tiny_model_dir):
    backend = rung.backend("torch", model=str(tiny_model_dir), device="cpu", precision="fp32")
    old = backend.model.eval()
    new, ref = copy.deepcopy(old), copy.deepcopy(old)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # the policy a few updates later, and some other reference
        for model, scale in ((new, 0.05), (ref, 0.1)):
            for p in model.parameters():
                p.add_(scale * torch.randn(p.shape, generator=generator))
    return backend.tokenizer, old, new, ref


PROMPTS = [[72, 105, 58], [49, 43, 50, 61, 63, 33]]  # "Hi:" and "1+2=?!"
COMPLETIONS = [  # G = 3 per prompt; a stop id ends a finished one; a cut one has none
    [97, 98, EOS], [97, EOS], [120, 121, 122, 119],   # the last: cut at max_tokens 4
    [51, EOS], [52, 53, 54, EOS], [51, 51, EOS],
]
REWARDS = [1.0, 0.5, 0.0, 1.0, 0.0, 0.25]


def build_batch(models, layout="shared", max_length=32, normalize="token", mask_truncated=False, beta=0.04):
    tokenizer, old, _, ref = models
    rewards = iter(REWARDS * 4)
    rewarder = Rewarder([("scripted", lambda completion, reference: next(rewards))])

    def reference(policy, batch):
        return token_logprobs(ref, batch)[0].numpy()

    def finish(rollout):
        adv = group_advantages(rollout.rewards, G)
        keep = np.array([c.finished for c in rollout.completions]) if mask_truncated else np.ones(6, bool)
        return {"advantages": rollout.per_token(adv),
                "loss_weights": loss_weights(rollout.token_completion, keep, normalize)}

    prompts = [RewardedPrompt((Message("user", "x"),)), RewardedPrompt((Message("user", "y"),))]
    stream = RolloutStream(prompts, PROMPTS, sample_tokens=scripted(COMPLETIONS), token_logprobs=token_logprobs,
                           rewarder=rewarder, tokenizer=tokenizer,
                           sampling=Sampling(max_tokens=4, temperature=1.0, stop_ids=frozenset({EOS})),
                           batch_size=2, group_size=G, max_length=max_length, pad_id=257, layout=layout,
                           shuffle=False, reference=reference, finish=finish)
    with torch.no_grad():
        return stream.next_from(old)


def hand_loss(models, normalize="token", mask_truncated=False, beta=0.04, eps=0.2):
    """The GRPO loss from separately computed log-probs, in numpy."""
    _, old, new, ref = models
    rewards = np.array(REWARDS).reshape(2, G)
    adv = (rewards - rewards.mean(1, keepdims=True)) / (rewards.std(1, ddof=1, keepdims=True) + 1e-4)
    per_completion = []
    for i, completion in enumerate(COMPLETIONS):
        if mask_truncated and completion[-1] != EOS:
            continue
        prompt = PROMPTS[i // G]
        lp_old, lp_new, lp_ref = (logprobs_alone(m, prompt, completion) for m in (old, new, ref))
        a = adv.reshape(-1)[i]
        ratio = np.exp(lp_new - lp_old)
        loss = -np.minimum(ratio * a, np.clip(ratio, 1 - eps, 1 + eps) * a)
        d = lp_ref - lp_new
        per_completion.append(loss + beta * (np.exp(d) - d - 1))
    if normalize == "token":
        return np.concatenate(per_completion).sum() / sum(len(x) for x in per_completion)
    return np.mean([x.mean() for x in per_completion])


def grpo_loss(models, batch, beta=0.04):
    _, _, new, _ = models
    value, metrics = GRPOLoss(token_logprobs, 0.2, None, beta)(new, batch)
    assert value.requires_grad  # the loss trains the policy
    return float(value.detach()), {k: float(v.detach()) for k, v in metrics.items()}


@pytest.mark.parametrize("normalize", ["token", "sequence"])
def test_loss_equals_hand_computation(models, normalize):
    batch = build_batch(models, normalize=normalize)
    value, metrics = grpo_loss(models, batch)
    expected = hand_loss(models, normalize=normalize)
    assert abs(value - expected) < 1e-5, (value, expected)
    assert metrics["reward_mean"] == pytest.approx(np.mean(REWARDS))
    assert metrics["reward_scripted"] == pytest.approx(np.mean(REWARDS))
    assert metrics["finished_fraction"] == pytest.approx(5 / 6)
    assert metrics["kl"] > 0


def test_real_tokens_normalise_padding_and_layout_do_not(models):
    """A group in one row, spread over two rows (max_length too short for all three) and one
    row per completion give the same loss: the denominator is the real completion tokens,
    never the padded length. Rows are as long as the most they hold (longest prompt 6 tokens,
    completions of up to 4), however long max_length is."""
    shapes, losses = [], []
    for layout, max_length in (("shared", 32), ("shared", 64), ("shared", 15), ("separate", 16)):
        batch = build_batch(models, layout=layout, max_length=max_length)
        shapes.append(batch["input_ids"].shape)
        losses.append(grpo_loss(models, batch)[0])
    assert shapes == [(2, 18), (2, 18), (4, 14), (6, 10)]
    assert max(losses) - min(losses) < 1e-5, losses


@pytest.mark.parametrize("normalize", ["token", "sequence"])
def test_masked_truncated_completion_leaves_the_denominator_too(models, normalize):
    """With mask_truncated_completions the cut completion is left out of the sum *and* of the
    count: the loss equals the hand computation over the other five alone (TRL's sequence
    loss divides by all six, shrinking it by 1/6)."""
    batch = build_batch(models, normalize=normalize, mask_truncated=True)
    value, _ = grpo_loss(models, batch)
    expected = hand_loss(models, normalize=normalize, mask_truncated=True)
    assert abs(value - expected) < 1e-5, (value, expected)
    weights = batch["loss_weights"]
    assert weights.sum() == pytest.approx(1.0)


def test_one_iteration_needs_no_old_logprobs(models):
    """num_iterations 1: a batch without `old_logprobs` (the loss detaches its own) gives the
    loss and the gradients of one whose old log-probs the same weights computed at sampling."""
    _, old, _, _ = models
    batch = build_batch(models)
    without = {k: v for k, v in batch.items() if k != "old_logprobs"}
    results = []
    for given in (batch, without):
        old.zero_grad()
        value, _ = GRPOLoss(token_logprobs, 0.2, None, 0.04)(old, given)
        value.backward()
        results.append((float(value.detach()), [p.grad.clone() for p in old.parameters()]))
    old.zero_grad()
    (value_with, grads_with), (value_without, grads_without) = results
    assert abs(value_with - value_without) < 1e-6
    assert any(float(g.abs().sum()) > 0 for g in grads_without)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads_with, grads_without))


def test_group_advantages_and_zero_variance_group():
    adv = group_advantages(np.array([1.0, 0.0, 1.0, 0.5, 0.5, 0.5]), 3)
    assert np.allclose(adv[3:], 0.0)
    expected = (np.array([1, 0, 1]) - 2 / 3) / (np.std([1, 0, 1], ddof=1) + 1e-4)
    assert np.allclose(adv[:3], expected, atol=1e-6)
    assert np.allclose(group_advantages(np.array([1.0, 0.0]), 2, scale=False), [0.5, -0.5])


# ---------------------------------------------------------------- runs

from rung.config import make_config  # noqa: E402
from rung.runner import Run, build  # noqa: E402
from tests.rlhf.conftest import write_jsonl  # noqa: E402

STARTS_WITH_DIGIT = {"name": "format_match", "pattern": r"[0-9][\s\S]*"}


class Interrupted(Exception):
    pass


@pytest.fixture(scope="module")
def prompt_files(tmp_path_factory):
    import random

    rng = random.Random(0)
    rows = [{"prompt": f"{rng.randrange(10, 99)}+{rng.randrange(10, 99)}=", "reference": "0"} for _ in range(48)]
    folder = tmp_path_factory.mktemp("prompts")
    return write_jsonl(folder / "train.jsonl", rows[:40]), write_jsonl(folder / "eval.jsonl", rows[40:])


def grpo_run(out, model_dir, prompts, stop_at=None, backend=None, **trainer):
    config = make_config({
        "output_dir": str(out),
        "backend": backend or {"name": "torch", "model": str(model_dir), "device": "cpu", "precision": "fp32"},
        "data": {"name": "prompts_jsonl", "path": str(prompts[0])},
        "trainer": {"name": "grpo", "steps": 6, "batch_size": 4, "num_generations": 4, "max_completion_length": 4,
                    "max_prompt_length": 24, "max_length": 64, "chat_template": "plain", "learning_rate": 1e-2,
                    "log_every": 1, "eval_every": 100, "eval_data": {"name": "prompts_jsonl", "path": str(prompts[1])},
                    "rewards": [STARTS_WITH_DIGIT], "resume": "never", **trainer},
        "logging": {"sinks": [{"name": "jsonl"}]},
        "seed": 0,
    })
    run = Run(config)
    run.output_dir.mkdir(parents=True, exist_ok=True)
    if stop_at is not None:  # a run cut off right after the checkpoint of step `stop_at`
        def checkpointed(step, path):
            if step == stop_at:
                raise Interrupted
        run.checkpointed = checkpointed
    trainer_ = build(run.plugins, "trainer", config.trainer)
    try:
        result = trainer_.train(run)
    except Interrupted:
        result = None
    run.close()
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return trainer_, result, metrics


def test_grpo_raises_mean_reward_on_a_verifiable_task(tmp_path, tiny_model_dir, prompt_files):
    """Reward 1 when the completion starts with a digit: the mean reward of the sampled
    completions climbs over a few dozen steps on the tiny model."""
    trainer, result, metrics = grpo_run(tmp_path, tiny_model_dir, prompt_files, steps=20, num_generations=8,
                                        learning_rate=2e-2, eval_every=20, eval_on_start=True)
    assert "old_logprobs" not in trainer.stream.cache[0]  # one iteration: no sampling-time forward pass
    rewards = [m["reward_mean"] for m in metrics if "reward_mean" in m]
    assert len(rewards) == 20
    first, last = np.mean(rewards[:5]), np.mean(rewards[-5:])
    assert last > first + 0.3, rewards
    evals = [m["eval_reward"] for m in metrics if "eval_reward" in m]
    assert len(evals) == 2 and evals[-1] > evals[0], evals
    assert (tmp_path / "model" / "model.safetensors").is_file()


def test_rung_run_trains_logs_rewards_and_saves(tmp_path, tiny_model_dir, prompt_files):
    import yaml
    from click.testing import CliRunner

    from rung.cli.main import cli

    config = {
        "output_dir": str(tmp_path / "out"),
        "backend": {"name": "torch", "model": str(tiny_model_dir), "device": "cpu", "precision": "fp32"},
        "data": {"name": "prompts_jsonl", "path": str(prompt_files[0])},
        "trainer": {"name": "grpo", "steps": 4, "batch_size": 2, "num_generations": 4, "max_completion_length": 4,
                    "max_prompt_length": 24, "max_length": 48, "chat_template": "plain", "learning_rate": 1e-2,
                    "log_every": 2, "eval_size": 4, "beta": 0.05, "num_iterations": 2,
                    "rewards": [STARTS_WITH_DIGIT, {"name": "length", "target": 4}]},
        "logging": {"sinks": [{"name": "jsonl"}]},
    }
    path = tmp_path / "grpo.yaml"
    path.write_text(yaml.safe_dump(config))
    out = CliRunner().invoke(cli, ["run", str(path)])
    assert out.exit_code == 0, out.output
    metrics = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    logged = [m for m in metrics if "reward_mean" in m]
    assert [m["step"] for m in logged] == [2, 4]
    for key in ("reward_std", "reward_format_match", "reward_length", "kl", "clip_fraction", "completion_length"):
        assert key in logged[-1], key
    assert logged[-1]["kl"] > 0  # the policy moved away from its frozen copy
    assert "eval_reward" in metrics[-1] and "eval_reward_length" in metrics[-1]
    assert (tmp_path / "out" / "model" / "model.safetensors").is_file()
    assert (tmp_path / "out" / "model" / "tokenizer.json").is_file()


def test_resume_continues_with_the_same_losses(tmp_path, tiny_model_dir, prompt_files):
    """A run cut off after its step-3 checkpoint and resumed gives the losses of one that ran through."""
    options = dict(steps=6, save_every=3, eval_data=None, eval_size=0, beta=0.05)
    _, _, whole = grpo_run(tmp_path / "whole", tiny_model_dir, prompt_files, **options)
    _, none, _ = grpo_run(tmp_path / "cut", tiny_model_dir, prompt_files, stop_at=3, **options)
    assert none is None
    trainer, result, resumed = grpo_run(tmp_path / "cut", tiny_model_dir, prompt_files, resume="auto", **options)
    assert result.steps == 6 and trainer.stream.calls == 6
    losses = {m["step"]: m["loss"] for m in whole if "loss" in m}
    again = {m["step"]: m["loss"] for m in resumed if "loss" in m}
    assert sorted(again) == [1, 2, 3, 4, 5, 6]  # steps 1-3 from the first part, 4-6 resumed
    assert all(abs(losses[s] - again[s]) < 1e-5 for s in range(1, 7)), (losses, again)
    rewards = {m["step"]: m["reward_mean"] for m in whole if "reward_mean" in m}
    assert rewards == {m["step"]: m["reward_mean"] for m in resumed if "reward_mean" in m}


def test_grpo_with_lora_uses_the_adapter_free_model_as_reference(tmp_path, tiny_model_dir, prompt_files):
    trainer, result, metrics = grpo_run(tmp_path, tiny_model_dir, prompt_files, steps=3, beta=0.1,
                                        lora={"r": 4}, learning_rate=5e-2,
                                        rewards=[{"name": "length", "target": 0, "scale": 8}])
    assert result.steps == 3
    kls = [m["kl"] for m in metrics if "kl" in m]
    assert kls[0] == pytest.approx(0.0, abs=1e-7) and kls[-1] > 0  # fresh adapters are the base; then they move
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()


def test_grpo_on_jax(tmp_path, tiny_model_dir, prompt_files):
    """The same config on the jax backend: samples through jax's sample_tokens, one compiled step."""
    pytest.importorskip("rung_jax")
    from rung.objectives import key
    from rung.plugins import get_plugins

    if key("sample_tokens", "jax") not in get_plugins().registry.items.get("objective", {}):
        pytest.skip("rung-jax registers no sample_tokens yet")
    trainer, result, metrics = grpo_run(tmp_path, tiny_model_dir, prompt_files, steps=3, num_iterations=2,
                                        batch_size=2, num_generations=2, eval_data=None, eval_size=2,
                                        backend={"name": "jax", "model": str(tiny_model_dir), "precision": "fp32"})
    assert result.steps == 3
    logged = [m for m in metrics if "reward_mean" in m]
    assert len(logged) == 3 and all(np.isfinite(m["loss"]) for m in logged)
    assert logged[0]["reward_mean"] == logged[1]["reward_mean"]  # num_iterations 2: one sample, two steps
    assert "eval_reward" in metrics[-1]


def test_rows_whose_rewards_are_all_equal_are_skipped_with_the_same_update(tmp_path, tiny_model_dir, prompt_files):
    """beta 0: a group whose rewards are all equal adds exactly 0 to the loss and its gradient, so
    leaving its row out (the default on torch) trains the same weights as running it."""
    from safetensors.numpy import load_file

    options = dict(steps=4, eval_data=None, eval_size=0, learning_rate=2e-2)
    _, _, skipped = grpo_run(tmp_path / "skip", tiny_model_dir, prompt_files, **options)
    _, _, every = grpo_run(tmp_path / "every", tiny_model_dir, prompt_files, skip_equal_reward_groups=False, **options)
    trained = [m["rows_trained"] for m in skipped if "rows_trained" in m]
    # rows were left out, beside rows that trained (one row is kept when no row has a signal)
    assert len(trained) == 4 and min(trained) < 1 and max(trained) > 1 / 4
    assert not any("rows_trained" in m for m in every)
    losses = [m["loss"] for m in every if "loss" in m]
    assert losses == pytest.approx([m["loss"] for m in skipped if "loss" in m], abs=1e-6)
    assert [m["reward_mean"] for m in every if "reward_mean" in m] == \
        [m["reward_mean"] for m in skipped if "reward_mean" in m]
    a, b = (load_file(str(tmp_path / run / "model" / "model.safetensors")) for run in ("skip", "every"))
    start = load_file(str(tiny_model_dir / "model.safetensors"))
    assert max(float(np.abs(b[name] - start[name]).max()) for name in b) > 1e-3  # the runs trained
    for name in a:
        np.testing.assert_allclose(a[name], b[name], atol=1e-6, err_msg=name)

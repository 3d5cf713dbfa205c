"""grpo: the loss of one batch against a hand computation (numpy, from separately computed
log-probs), normalisation by real completion tokens, and runs that learn, log, save and resume."""

from __future__ import annotations

import copy

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
    return float(value.detach()), {k: float(v) for k, v in metrics.items()}


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
    """Rows twice as long (more padding) and one row per completion give the same loss: the
    denominator is the real completion tokens, never the padded length."""
    base, _ = grpo_loss(models, build_batch(models, max_length=32))
    padded, _ = grpo_loss(models, build_batch(models, max_length=64))
    separate, _ = grpo_loss(models, build_batch(models, layout="separate", max_length=16))
    assert abs(base - padded) < 1e-6 and abs(base - separate) < 1e-5, (base, padded, separate)


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


def test_group_advantages_and_zero_variance_group():
    adv = group_advantages(np.array([1.0, 0.0, 1.0, 0.5, 0.5, 0.5]), 3)
    assert np.allclose(adv[3:], 0.0)
    expected = (np.array([1, 0, 1]) - 2 / 3) / (np.std([1, 0, 1], ddof=1) + 1e-4)
    assert np.allclose(adv[:3], expected, atol=1e-6)
    assert np.allclose(group_advantages(np.array([1.0, 0.0]), 2, scale=False), [0.5, -0.5])

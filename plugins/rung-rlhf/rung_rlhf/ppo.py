"""`ppo`: the RLHF recipe of InstructGPT (the formulas of TRL's former PPOTrainer).

The policy carries a value head (`backend.score_heads().add_score_head()`; objective
`logprobs_and_scores` gives its log-probs and values in one pass). One completion is sampled
per prompt (a row each). At sampling time, in numpy:

    r_t  = -beta * (old_t - ref_t)                     per completion token (KL to the reference)
    r_T += score                                       at the last token: the reward model's score
                                                       and/or the verifiable rewards
    delta_t = r_t + gamma V_{t+1} - V_t,   A_t = delta_t + gamma lam A_{t+1}   (GAE; V after the end: 0)
    returns_t = A_t + V_t;   A whitened over the batch's completion tokens (`whiten_advantages`)

and the loss of `num_iterations` PPO epochs on that batch, averaged over real completion tokens:

    policy: max(-A r_t, -A clip(r_t, 1 - epsilon, 1 + epsilon)),  r_t = exp(logp_t - old_t)
    value:  0.5 max((V - R)^2, (clip(V, V_old - value_clip, V_old + value_clip) - R)^2)
    loss = policy + value_coef * value
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rung.context import RunContext
from rung.errors import ConfigError

from rung_rlhf.online import OnlineTrainer, reward_metrics
from rung_rlhf.online_options import PPOOptions
from rung_rlhf.ops import like, namespace
from rung_rlhf.rollouts import Rollout, to_numpy


def gae(rewards: np.ndarray, values: np.ndarray, mask: np.ndarray, gamma: float,
        lam: float) -> tuple[np.ndarray, np.ndarray]:
    """Advantages and returns [R, T'] of per-token `rewards` and `values`, where `mask` marks
    each row's completion tokens (one contiguous run a row); 0 elsewhere."""
    mask = np.asarray(mask, dtype=bool)
    values = np.where(mask, values, 0.0).astype(np.float64)
    rewards = np.where(mask, rewards, 0.0).astype(np.float64)
    advantages = np.zeros_like(values)
    running = np.zeros(values.shape[0])
    for t in reversed(range(values.shape[1])):
        next_value = values[:, t + 1] if t + 1 < values.shape[1] else 0.0
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = np.where(mask[:, t], delta + gamma * lam * running, 0.0)
        advantages[:, t] = running
    returns = np.where(mask, advantages + values, 0.0)
    return advantages.astype(np.float32), returns.astype(np.float32)


def whiten(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(values - mean) / sqrt(var + 1e-8) over the masked entries (unbiased var, as TRL); 0 elsewhere."""
    mask = np.asarray(mask, dtype=bool)
    kept = np.asarray(values, dtype=np.float64)[mask]
    if kept.size < 2:
        return np.where(mask, values, 0.0).astype(np.float32)
    out = (values - kept.mean()) / np.sqrt(kept.var(ddof=1) + 1e-8)
    return np.where(mask, out, 0.0).astype(np.float32)


def shaped_rewards(scores: np.ndarray, old: np.ndarray, ref: np.ndarray | None, mask: np.ndarray,
                   beta: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-token rewards [R, T']: -beta * (old - ref) on every completion token, plus each
    row's score at its last completion token; and each row's summed KL [R]."""
    mask = np.asarray(mask, dtype=bool)
    kl = np.where(mask, old - (ref if ref is not None else old), 0.0)
    rewards = -beta * kl
    has = mask.any(axis=1)
    last = mask.shape[1] - 1 - np.argmax(mask[:, ::-1], axis=1)
    rows = np.nonzero(has)[0]
    rewards[rows, last[rows]] += np.asarray(scores)[rows]
    return rewards.astype(np.float32), kl.sum(axis=1).astype(np.float32)


class PPOLoss:
    """`loss(model, batch) -> (value, metrics)` over the framework's `logprobs_and_scores`."""

    def __init__(self, logprobs_and_scores: Any, epsilon: float, value_clip: float, value_coef: float) -> None:
        self.objective, self.epsilon = logprobs_and_scores, epsilon
        self.value_clip, self.value_coef = value_clip, value_coef

    def __call__(self, model: Any, batch: Any) -> tuple[Any, dict[str, Any]]:
        (logp, scores), _ = self.objective(model, batch)
        xp = namespace(logp)
        values = scores[:, :-1]  # the value of the state that predicts token t: position t - 1
        old = like(batch["old_logprobs"], logp, dtype=logp.dtype)
        old_values = like(batch["old_values"], logp, dtype=logp.dtype)
        advantages = like(batch["advantages"], logp, dtype=logp.dtype)
        returns = like(batch["returns"], logp, dtype=logp.dtype)
        weights = like(batch["loss_weights"], logp, dtype=logp.dtype)
        ratio = xp.exp(logp - old)
        clipped = xp.clip(ratio, 1.0 - self.epsilon, 1.0 + self.epsilon)
        policy = xp.sum(xp.maximum(-advantages * ratio, -advantages * clipped) * weights)
        values_clipped = old_values + xp.clip(values - old_values, -self.value_clip, self.value_clip)
        value = 0.5 * xp.sum(xp.maximum((values - returns) ** 2, (values_clipped - returns) ** 2) * weights)
        metrics = reward_metrics(batch, logp)
        metrics.update({
            "policy_loss": policy, "value_loss": value,
            "clip_fraction": xp.sum(xp.astype(xp.abs(ratio - 1.0) > self.epsilon, logp.dtype) * weights),
            "approx_kl": xp.sum(0.5 * (logp - old) ** 2 * weights),
            "kl": xp.mean(like(batch["sequence_kl"], logp)),
            "value_mean": xp.sum(values * weights),
        })
        return policy + self.value_coef * value, metrics


class PPOTrainer(OnlineTrainer):
    """A policy with a value head; rewards from a reward model (or reward functions) minus a
    per-token KL to the reference; GAE; clipped policy and value losses."""

    options_model = PPOOptions

    def __init__(self, options: PPOOptions) -> None:
        super().__init__(options)
        self._logprobs_and_scores: Any = None

    def prepare_model(self, run: RunContext, backend: Any) -> None:
        super().prepare_model(run, backend)
        if not callable(getattr(backend, "score_heads", None)):
            raise ConfigError(f"trainer 'ppo': backend '{run.config.backend.name}' has no score_heads() "
                              "for a value head")
        heads = backend.score_heads()
        if not heads.has_score_head():
            heads.add_score_head(seed=run.seed)

    def loss(self, run: RunContext) -> PPOLoss:
        o = self.options
        return PPOLoss(run.objective("logprobs_and_scores"), o.epsilon, o.value_clip, o.value_coef)

    def old_arrays(self, run: RunContext) -> Any:
        objective = run.objective("logprobs_and_scores")

        def logprobs_and_values(policy: Any, batch: dict) -> dict[str, np.ndarray]:
            (logp, scores), _ = objective(policy, batch)
            return {"old_logprobs": to_numpy(logp), "old_values": to_numpy(scores)[:, :-1]}

        return logprobs_and_values

    def finish(self, rollout: Rollout) -> dict[str, np.ndarray]:
        o = self.options
        mask = rollout.token_completion >= 0
        old, ref = rollout.arrays["old_logprobs"], rollout.arrays.get("ref_logprobs")
        rewards, kl = shaped_rewards(rollout.rewards, old, ref, mask, o.beta)
        advantages, returns = gae(rewards, rollout.arrays["old_values"], mask, o.gamma, o.lam)
        if o.whiten_advantages:
            advantages = whiten(advantages, mask)
        return {"advantages": advantages, "returns": returns, "sequence_kl": kl,
                "loss_weights": (mask / max(int(mask.sum()), 1)).astype(np.float32)}

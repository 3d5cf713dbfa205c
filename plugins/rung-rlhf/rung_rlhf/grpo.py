"""`grpo`: group-relative policy optimisation (DeepSeekMath; the formulas of TRL's GRPOTrainer).

Per prompt, G completions are sampled and rewarded; a completion's advantage is its reward
minus its group's mean, divided by the group's standard deviation (+1e-4, unbiased as
torch.std) with `scale_rewards`. The loss of a completion token t is

    -min(r_t A, clip(r_t, 1 - epsilon, 1 + epsilon_high) A) + beta * KL_t,
    r_t = exp(logp_t - old_t),  KL_t = exp(ref_t - logp_t) - (ref_t - logp_t) - 1  (k3, as TRL)

with `old_t` the policy's log-prob when the batch was sampled and `ref_t` the reference's.
With `num_iterations` 1 every batch is trained by the very weights that sampled it (the
micro-batches of one step are all sampled before its update), so `old_t` is the current
log-prob itself, detached: the ratio is exactly 1 and its gradient that of `logp_t`. Then no
sampling-time forward pass is run at all (as TRL skips its old log-probs in that case); with
more iterations the stream computes `old_logprobs` once per sampled batch.

Normalisation counts real completion tokens only, so padding, short completions and masked
ones never shrink the loss:

- token:    sum over the batch's completion tokens / their count (TRL's "bnpo"/"dapo" per micro-batch);
- sequence: each completion's token mean, then the mean over completions (TRL's "grpo"), where a
            completion masked by `mask_truncated_completions` is left out of that mean too
            (TRL divides by every completion, so masking one shrinks the loss).

Both are one weight per token, computed in numpy at sampling time (`loss_weights`), so the
loss is a weighted sum written once over the array API (`rung_rlhf.ops`) for torch and jax.

With beta 0 a completion whose advantage is 0 (every one of a group whose rewards are all
equal: early in training on a hard task, most groups) adds exactly 0 to the loss and to the
gradient. `skip_equal_reward_groups` leaves rows holding only such completions out of the
batch after the weights are computed (`rows_with_signal`), so the update is the same and the
forward and backward passes skip them; one row is always kept, so the optimizer still steps.
On torch only: jax compiles its step for one batch shape. TRL runs them. `rows_trained` logs
the fraction of rows trained; `clip_fraction` counts the trained rows' tokens.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rung.context import RunContext

from rung_rlhf.online import OnlineTrainer, reward_metrics
from rung_rlhf.online_options import GRPOOptions
from rung_rlhf.ops import like, namespace
from rung_rlhf.rollouts import Rollout


def group_advantages(rewards: np.ndarray, group_size: int, scale: bool = True) -> np.ndarray:
    """Each reward minus its group's mean (/ the group's std + 1e-4 when `scale`), [N]."""
    grouped = np.asarray(rewards, dtype=np.float64).reshape(-1, group_size)
    advantages = grouped - grouped.mean(axis=1, keepdims=True)
    if scale:
        std = grouped.std(axis=1, ddof=1, keepdims=True) if group_size > 1 else np.zeros_like(grouped[:, :1])
        advantages = advantages / (std + 1e-4)
    return advantages.reshape(-1).astype(np.float32)


def loss_weights(token_completion: np.ndarray, keep: np.ndarray, normalize: str) -> np.ndarray:
    """One weight per predicted token [R, T - 1] so that sum(weight * token_loss) is the
    normalised loss; `keep` [N] says which completions count (False: masked)."""
    tc = np.asarray(token_completion)
    counted = (tc >= 0) & np.asarray(keep)[np.maximum(tc, 0)]
    if normalize == "token":
        return (counted / max(int(counted.sum()), 1)).astype(np.float32)
    tokens = np.bincount(tc[counted], minlength=len(keep)).astype(np.float64)
    kept = int((tokens > 0).sum())
    per_token = np.where(counted, 1.0 / np.maximum(tokens[np.maximum(tc, 0)], 1.0), 0.0)
    return (per_token / max(kept, 1)).astype(np.float32)


def rows_with_signal(token_completion: np.ndarray, advantages: np.ndarray) -> np.ndarray:
    """Which rows [R] hold a predicted token of a completion whose advantage is not 0; at
    least one (the first) when none does."""
    tc = np.asarray(token_completion)
    signal = (tc >= 0) & (np.asarray(advantages)[np.maximum(tc, 0)] != 0)
    rows = signal.any(axis=1)
    if not rows.any():
        rows[0] = True
    return rows


def without_gradient(x: Any) -> Any:
    """`x`'s value as a constant of the autodiff graph (torch's detach, jax's stop_gradient)."""
    if callable(getattr(x, "detach", None)):
        return x.detach()
    import jax  # only reached with a jax array in hand: jax is loaded already, no new dependency

    return jax.lax.stop_gradient(x)


def no_old_arrays(policy: Any, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The sampling-time arrays of a batch trained once: none (the loss detaches its own log-probs)."""
    return {}


class GRPOLoss:
    """`loss(model, batch) -> (value, metrics)` over the framework's `token_logprobs`."""

    def __init__(self, token_logprobs: Any, epsilon: float, epsilon_high: float | None, beta: float) -> None:
        self.token_logprobs, self.beta = token_logprobs, beta
        self.low, self.high = 1.0 - epsilon, 1.0 + (epsilon_high if epsilon_high is not None else epsilon)

    def __call__(self, model: Any, batch: Any) -> tuple[Any, dict[str, Any]]:
        logp, _ = self.token_logprobs(model, batch)
        xp = namespace(logp)
        if "old_logprobs" in batch:
            old = like(batch["old_logprobs"], logp, dtype=logp.dtype)
        else:  # sampled by these weights (num_iterations 1): the ratio is exactly 1
            old = without_gradient(logp)
        advantages = like(batch["advantages"], logp, dtype=logp.dtype)
        weights = like(batch["loss_weights"], logp, dtype=logp.dtype)
        ratio = xp.exp(logp - old)
        clipped = xp.clip(ratio, self.low, self.high)
        per_token = -xp.minimum(ratio * advantages, clipped * advantages)
        counted = xp.astype(weights > 0, logp.dtype)
        tokens = xp.maximum(xp.sum(counted), xp.ones_like(xp.sum(counted)))
        metrics = reward_metrics(batch, logp)
        if "rows_trained" in batch:
            metrics["rows_trained"] = xp.mean(like(batch["rows_trained"], logp, dtype=logp.dtype))
        was_clipped = ((ratio < self.low) & (advantages < 0)) | ((ratio > self.high) & (advantages > 0))
        metrics["clip_fraction"] = xp.sum(xp.astype(was_clipped, logp.dtype) * counted) / tokens
        if self.beta:
            ref = like(batch["ref_logprobs"], logp, dtype=logp.dtype)
            delta = ref - logp
            kl = xp.exp(delta) - delta - 1.0
            per_token = per_token + self.beta * kl
            metrics["kl"] = xp.sum(kl * counted) / tokens
        return xp.sum(per_token * weights), metrics


class GRPOTrainer(OnlineTrainer):
    """G sampled completions per prompt, rewarded and compared within their group."""

    options_model = GRPOOptions

    def __init__(self, options: GRPOOptions) -> None:
        super().__init__(options)

    def prepare_model(self, run: RunContext, backend: Any) -> None:
        super().prepare_model(run, backend)
        o = self.options
        self.skip_rows = o.skip_equal_reward_groups and o.beta == 0 and getattr(backend, "framework", "") == "torch"

    def loss(self, run: RunContext) -> GRPOLoss:
        o = self.options
        return GRPOLoss(run.objective("token_logprobs"), o.epsilon, o.epsilon_high, o.beta)

    def old_arrays(self, run: RunContext) -> Any:
        # One update per sample: the weights that sampled a batch train it, so the old log-probs
        # are the current ones (see the module docstring) and need no forward pass of their own.
        return no_old_arrays if self.options.num_iterations == 1 else None

    def finish(self, rollout: Rollout) -> dict[str, np.ndarray]:
        o = self.options
        advantages = group_advantages(rollout.rewards, rollout.group_size, o.scale_rewards)
        keep = np.ones(len(rollout.completions), bool)
        if o.mask_truncated_completions:
            keep = np.asarray([c.finished for c in rollout.completions])
        out = {"advantages": rollout.per_token(advantages),
               "loss_weights": loss_weights(rollout.token_completion, keep, o.normalize)}
        if getattr(self, "skip_rows", False):
            out["keep_rows"] = rows_with_signal(rollout.token_completion, advantages)
        return out

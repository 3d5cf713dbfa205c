"""Objectives by name: what a trainer asks a framework for, and what each name means.

A trainer never computes a loss itself: it asks the run for an objective by name
(`run.objective("next_token_loss")`) and hands it to the backend's engine. Framework plugins
(rung-torch, rung-jax) register their implementation of each name through
`rung_register_objectives`, with `framework=`; so a trainer plugin imports only the core, and
the same trainer config runs on torch or jax by changing `backend.name`.

Every objective has the one shape `objective(model, batch) -> (value, metrics)`: `model` is
the framework's model (a `torch.nn.Module`, an NNX module), `batch` a mapping of numpy or
framework arrays, `value` a framework scalar or array, `metrics` a mapping of scalars. Engines
call losses inside their step (under autocast / jit) and evaluation objectives inside their
evaluation context (eval mode, no gradients, the current weights).

Batch keys: `input_ids` [B, T] int; what to predict, in one of two conventions:
`targets` [B, T], already shifted (targets[:, t] is the token after input_ids[:, t]: packed
pretraining windows), or `labels` [B, T], aligned with input_ids as in Hugging Face (position t
predicts labels[:, t + 1]: chat rows); -100 in either means "no loss here"; with neither, the
ids themselves shifted by one. `attention_mask` [B, T] (1 = real token) is optional.

Shared prompts (preference pairs, a group of sampled completions): `segment_ids` [B, T] int
packs one prompt and several completions of it in a row: 0 = the prompt, k >= 1 = completion
k, -1 = padding. A completion token sees the prompt and the earlier tokens of its own
completion only, and its rotary position continues from the prompt's end, so each
completion's log-probabilities equal those of `prompt + completion` run alone (the prompt is
computed once: `shared_prompt_layout` gives the positions and the mask in numpy, frameworks
build the same in their own ops). A `labels`-aligned output entry t - 1 is then
log p(input_ids[:, t] | what token t sees), for a completion's first token the prompt
alone. Without `segment_ids`, plain causal attention.

Shapes: every batch of one run should have the same shapes (pad to a fixed length): the jax
engine compiles its step once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Callable

from rung.errors import ConfigError

IGNORE_INDEX = -100

# The names a framework may provide, and what each computes. A framework need not provide
# all; a trainer names the ones it needs when it registers (`objectives=`), and a config whose
# backend framework lacks one is refused at validation.
OBJECTIVES: dict[str, str] = {
    "next_token_loss": (
        "mean cross-entropy of the predicted tokens (pretraining; supervised fine-tuning with "
        "-100 on every token that is not the assistant's)"
    ),
    "token_nll_sum": (
        "summed cross-entropy and how many tokens it covers: (sum, {'tokens': n}), so "
        "held-out loss is weighted by tokens across batches (`heldout_loss`)"
    ),
    "sequence_logprobs": (
        "per-row sum of log p(token) over the predicted tokens, shape [B] "
        "(preference and policy-gradient trainers)"
    ),
    "token_logprobs": (
        "log p(token) of every predicted token, 0 where nothing is predicted (-100), aligned "
        "with the targets: [B, T] for `targets`, [B, T - 1] for `labels` (labels[:, 1:]); "
        "honours `segment_ids` (DPO on packed pairs, GRPO and PPO per-token ratios)"
    ),
    "token_scores": (
        "the model's score head (`rung.interfaces.ScoreHeads`) at every position, [B, T] fp32: "
        "a reward model reads it at each sequence's last token, PPO's value head everywhere; "
        "honours `segment_ids`"
    ),
    "logprobs_and_scores": (
        "(token_logprobs, token_scores) from one forward pass: PPO's policy and value head"
    ),
    "sample_tokens": (
        "not a loss but the framework's batched KV-cache sampler, with its own signature: "
        "sample_tokens(model, prompts: list[list[int]], sampling: rung.decoding.Sampling) -> "
        "list[list[int]], each prompt's new token ids, ending with a stop id when one was "
        "sampled; rows sampled with `sampling.seed` + row index (online RL: GRPO, PPO)"
    ),
}


def key(name: str, framework: str) -> str:
    """The registry key of one framework's implementation of `name`."""
    return f"{name}/{framework}"


def missing(registry: Any, names: Iterable[str], framework: str | None) -> list[str]:
    """Which of `names` the framework has no registered implementation of."""
    have = registry.items.get("objective", {})
    return [n for n in names if framework is None or key(n, framework) not in have]


def load(registry: Any, name: str, framework: str | None) -> Any:
    """The objective function `name` for `framework`; a ConfigError naming both if absent."""
    if name not in OBJECTIVES:
        raise ConfigError(f"unknown objective '{name}'; known: {', '.join(OBJECTIVES)}")
    descriptor = registry.items.get("objective", {}).get(key(name, framework or "none"))
    if descriptor is None:
        provided = sorted(k.split("/")[1] for k in registry.items.get("objective", {}) if k.startswith(f"{name}/"))
        raise ConfigError(
            f"no framework plugin provides objective '{name}' for {framework or 'a hosted backend'}"
            + (f"; it exists for: {', '.join(provided)}" if provided else "")
        )
    return descriptor.load()


def heldout_loss(nll_sum: Any, batches: Iterable[Mapping[str, Any]]) -> Callable[[Any], dict[str, float]]:
    """An evaluator: token-weighted mean of a `token_nll_sum` objective over fixed batches.

    Framework-neutral (it only sums Python floats); the engine runs it in its evaluation
    context. Returns {} when there are no batches.
    """
    fixed = list(batches)

    def evaluate(model: Any) -> dict[str, float]:
        if not fixed:
            return {}
        total, count = 0.0, 0.0
        for batch in fixed:
            value, metrics = nll_sum(model, batch)
            total += float(value)
            count += float(metrics["tokens"])
        return {"eval_loss": total / max(count, 1.0)}

    return evaluate


def shared_prompt_layout(segment_ids: Any) -> tuple[Any, Any, Any]:
    """What `segment_ids` [B, T] (the prompt first, 0; then completions 1, 2, ...; then -1
    padding) mean, in numpy: rotary positions [B, T], attention mask [B, T, T] (True: query i
    may see key j) and sources [B, T] (the position whose logits predict token t).

    Position: a prompt token's index in the prompt; a completion token's, the prompt's length
    plus its index in its completion. Mask: causal, and a key is visible when it is the
    prompt's or the query's own completion's; every query sees itself (no empty row). Source:
    t - 1, except a completion's first token, which the prompt's last token predicts. The
    framework objectives compute the same in their own ops; this is the reference.
    """
    import numpy as np

    seg = np.asarray(segment_ids)
    T = seg.shape[-1]
    prompt = seg == 0
    prompt_len = prompt.sum(-1, keepdims=True)
    same = seg[:, :, None] == seg[:, None, :]
    causal = np.tril(np.ones((T, T), bool))[None]
    mask = (causal & ((prompt[:, None, :] & (seg[:, :, None] >= 0)) | same)) | np.eye(T, dtype=bool)[None]
    within = (same & causal).sum(-1) - 1  # index within its own segment
    positions = np.where(seg > 0, prompt_len + within, within)
    index = np.arange(T)[None, :]
    first = (seg > 0) & (within == 0)
    sources = np.maximum(np.where(first, prompt_len - 1, index - 1), 0)
    return positions.astype(np.int64), mask, sources.astype(np.int64)

"""The `sample_tokens` objective for jax: online RL's batched KV-cache sampler.

`sample_tokens(model, prompts, sampling) -> list[list[int]]` (the signature `rung.objectives`
gives it): every prompt decoded at once by `rung_jax.generation.generate_rows` (left-padded
into one batch, one compiled loop per bucketed shape), row i seeded with `sampling.seed + i`,
greedy at temperature 0, each row ending at a stop id (kept) or after `sampling.max_tokens`
new ids. GRPO and PPO call it inside the engine's `evaluation()` context, where `model` holds
the weights of the step just taken.

Precision: the backend's "auto" rule for decoding (`rung_jax.runtime.resolve_precision`):
bf16 on GPUs and TPUs, the parameters' own dtype (fp32) on a CPU, so sampling on a CPU gives
the tokens the backend's `generate` gives.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
from flax import nnx

from rung.decoding import Sampling
from rung_jax import runtime
from rung_jax.generation import generate_rows


def _platform(model: nnx.Module) -> str:
    for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)):
        devices = getattr(leaf, "devices", None)
        if devices is not None:
            return next(iter(devices())).platform
    return jax.default_backend()


def sample_tokens(model: nnx.Module, prompts: Sequence[Sequence[int]], sampling: Sampling) -> list[list[int]]:
    """Each prompt's new token ids, sampled together (see the module docstring)."""
    platform = _platform(model)
    dtype: Any = None
    if platform != "cpu":
        dtype = runtime.DTYPES[runtime.resolve_precision("auto", platform, "decode")]
    return generate_rows(model, [list(p) for p in prompts], sampling, dtype)

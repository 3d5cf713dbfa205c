"""Loss arithmetic written once for torch tensors and jax arrays (the array API standard).

The trainers here import no framework: a loss receives what the framework's objectives
returned (torch tensors inside the torch engine's autograd, jax tracers inside the jax
engine's jit) and computes with `namespace(x)`, the array API namespace of `x`
(`array_api_compat`), so one formula gives the same numbers and gradients on both.
"""

from __future__ import annotations

from typing import Any

from array_api_compat import array_namespace, device


def namespace(*arrays: Any) -> Any:
    """The array API namespace of `arrays` (torch's or jax's)."""
    return array_namespace(*arrays)


def like(value: Any, reference: Any, dtype: Any = None) -> Any:
    """`value` (numpy, list, scalar) as an array of `reference`'s framework, on its device."""
    xp = namespace(reference)
    return xp.asarray(value, dtype=dtype, device=device(reference))


def logsigmoid(x: Any) -> Any:
    """log(sigmoid(x)), stable for large |x|."""
    xp = namespace(x)
    return -xp.logaddexp(xp.zeros_like(x), -x)


def segment_sums(token_values: Any, segments: Any, segment: int) -> Any:
    """Per-row sum of `token_values` [B, T'] where `segments` [B, T'] (numpy or framework,
    aligned with the values) equals `segment`: one completion's log-probability in a packed row."""
    xp = namespace(token_values)
    keep = like(segments, token_values) == segment
    return xp.sum(xp.where(keep, token_values, xp.zeros_like(token_values)), axis=-1)


def masked_mean(values: Any, mask: Any, axis: Any = None) -> Any:
    """Mean of `values` where `mask` (numpy or framework, 1/0) is 1; 0 where nothing is kept."""
    xp = namespace(values)
    m = xp.astype(like(mask, values), values.dtype)
    total = xp.sum(values * m, axis=axis)
    count = xp.sum(m, axis=axis)
    return total / xp.maximum(count, xp.ones_like(count))


def gather_positions(values: Any, positions: Any) -> Any:
    """values[b, positions[b, k]] for values [B, T] and positions [B, K] (numpy ints): a score
    head read at each sequence's last token."""
    xp = namespace(values)
    index = like(positions, values)  # numpy int64: int64 in torch, int32 in jax (no x64)
    return xp.take_along_axis(values, index, axis=-1)

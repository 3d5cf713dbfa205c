"""Which device and which precision: "auto" picks the fastest safe one for the machine."""

from __future__ import annotations

import functools
from typing import Literal

import torch

from rung.errors import ConfigError

Purpose = Literal["train", "decode"]


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """`auto`: the first CUDA GPU if there is one, else the CPU; anything else as torch reads it."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(f"backend.device: '{device}' is not a torch device (auto, cpu, cuda, cuda:1, ...)") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"backend.device: '{device}' asked for, but torch sees no CUDA GPU")
    return resolved


@functools.lru_cache(maxsize=None)
def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AMX or AVX512-BF16)."""
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    try:
        return any(getattr(torch.cpu, name)() for name in probes if hasattr(torch.cpu, name))
    except Exception:  # pragma: no cover - very old or unusual builds
        return False


def resolve_precision(precision: str | None, device: torch.device, purpose: Purpose = "train") -> str:
    """"fp32", "bf16" or "fp16" for `device`; `auto` is the fastest safe choice for `purpose`.

    Training: bf16 autocast on GPUs that support it and on CPUs with AMX or AVX512-BF16,
    fp32 otherwise. Decoding: bf16 on such GPUs, but fp32 on the CPU, where one token at a
    time is memory- and overhead-bound and bf16 is several times slower (see
    benchmarks/torch_decode.py).
    """
    if precision in (None, "auto"):
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else ("fp16" if purpose == "decode" else "fp32")
        if device.type == "cpu" and purpose == "train" and cpu_has_fast_bf16():
            return "bf16"
        return "fp32"
    if precision not in ("fp32", "bf16", "fp16"):
        raise ConfigError(f"backend.precision: '{precision}' is not one of auto, fp32, bf16, fp16")
    return precision


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


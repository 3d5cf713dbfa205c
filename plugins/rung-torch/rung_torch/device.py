"""Which device and which precision: "auto" picks the fastest safe one for the machine."""

from __future__ import annotations

import os
from typing import Literal

import torch

from rung.errors import ConfigError
from rung.hardware import cpu_has_fast_bf16

Purpose = Literal["train", "decode"]


def resolve_device(requested: str | torch.device | None = "auto") -> torch.device:
    """`auto`/None: this process's GPU under torchrun (LOCAL_RANK), else cuda, else Apple's
    mps, else cpu. The one resolver of rung-torch's backend and engine and of rung-hf."""
    name = str(requested or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    if name == "cuda" and torch.cuda.is_available():
        # Under torchrun each process takes its own GPU; alone, the current one.
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and "LOCAL_RANK" in os.environ:
            return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        return torch.device("cuda", torch.cuda.current_device())
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"backend.device: '{requested}' asked for, but torch sees no CUDA GPU")
    try:
        return torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(
            f"backend.device: '{requested}' is not a torch device (auto, cpu, cuda, cuda:1, mps)"
        ) from None


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


"""Which device and number format a run trains in: "auto" picks the fastest safe one.

bf16 autocast (weights and optimizer state stay fp32) on CUDA GPUs that support bf16 and on
CPUs with AMX or AVX512-BF16 (where bf16 matmuls run ~3x faster than fp32); fp32 elsewhere.
fp16 autocast trains with a gradient scaler.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch

from rung.errors import ConfigError

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_fast_bf16() -> bool:
    """True on CPUs whose matmuls run bf16 natively (Intel AMX or AVX512-BF16)."""
    return bool({"amx_bf16", "avx512_bf16"} & cpu_flags())


def resolve_device(requested: Any = None) -> torch.device:
    """`auto`/None: this process's GPU under torchrun (LOCAL_RANK), else cuda, else cpu."""
    name = str(requested or "auto").strip().lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and torch.cuda.is_available():
        # Under torchrun each process takes its own GPU; alone, the current one.
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and "LOCAL_RANK" in os.environ:
            return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        return torch.device("cuda", torch.cuda.current_device())
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"backend.device: '{requested}' asked for, but torch sees no CUDA GPU")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"backend.device: '{requested}' is not a torch device (auto, cpu, cuda, cuda:1, ...)") from None


def resolve_precision(requested: str | None, device: torch.device) -> str:
    """"fp32", "bf16" or "fp16": `requested`, with "auto" decided for `device`."""
    name = (requested or "auto").lower()
    if name not in ("auto", *_DTYPES):
        raise ConfigError(f"backend.precision: '{requested}' is not one of auto, fp32, bf16, fp16")
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if cpu_has_fast_bf16() else "fp32"
    return "fp32"


@dataclass(frozen=True)
class Precision:
    """How the forward pass runs: autocast dtype (None: plain fp32) and whether to scale."""

    name: str
    device: torch.device

    @property
    def dtype(self) -> torch.dtype | None:
        return _DTYPES[self.name]

    @property
    def needs_scaler(self) -> bool:
        return self.name == "fp16"

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def scaler(self) -> Any | None:
        if not self.needs_scaler:
            return None
        return torch.amp.GradScaler(self.device.type)

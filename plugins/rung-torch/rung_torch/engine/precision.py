"""How the forward pass runs in the number format `rung_torch.device.resolve_precision` chose.

bf16 autocast (weights and optimizer state stay fp32) on CUDA GPUs that support bf16 and on
CPUs with AMX or AVX512-BF16 (where bf16 matmuls run ~3x faster than fp32); fp32 elsewhere.
fp16 autocast trains with a gradient scaler.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch


_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


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

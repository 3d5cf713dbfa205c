"""What the loop needs for model-FLOPs utilisation and memory: FLOPs per token, peaks, memory.

MFU = achieved model FLOPs / the devices' peak (the core's loop divides). Model FLOPs per token
come from the model's `ModelConfig.flops_per_token(seq)` (6N plus attention) when it has one,
else 6 x parameters.
The peak is a table of dense bf16 tensor-core figures for known GPUs, and on a CPU a bf16 (or
fp32, without native bf16) matmul measured once per process: what this machine really does.
"""

from __future__ import annotations

import os
import resource
import time
from functools import lru_cache

import torch
from torch import nn

# Dense (no sparsity) bf16 peaks, FLOP/s, matched against torch.cuda.get_device_name.
GPU_BF16_PEAK: list[tuple[str, float]] = [
    ("GB200", 2.5e15),
    ("B200", 2.25e15),
    ("B100", 1.75e15),
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM
    ("H800", 989e12),
    ("GH200", 989e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
    ("A10G", 70e12),
    ("A10", 125e12),
    ("RTX 6000 Ada", 364e12),
    ("RTX 4090", 165e12),
    ("RTX 3090", 71e12),
    ("A6000", 155e12),
    ("V100", 125e12),  # fp16: V100 has no bf16
    ("T4", 65e12),  # fp16
]


def gpu_peak_flops(device: torch.device) -> float | None:
    name = torch.cuda.get_device_name(device)
    for key, peak in GPU_BF16_PEAK:
        if key.lower() in name.lower():
            return peak
    return None


@lru_cache(maxsize=4)
def cpu_peak_flops(dtype: torch.dtype = torch.bfloat16, size: int = 1024, seconds: float = 0.25) -> float:
    """FLOP/s of a square `dtype` matmul on this CPU with torch's threads: best of a short run.

    `RUNG_CPU_PEAK_FLOPS` overrides the measurement.
    """
    override = os.environ.get("RUNG_CPU_PEAK_FLOPS")
    if override:
        return float(override)
    # Its own generator: drawing from torch's global one would move a training run's RNG (LoRA's
    # dropout) at the first step, so a resumed run, which measures at another step, would differ.
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(dtype)
    b = torch.randn(size, size, generator=generator).to(dtype)
    torch.mm(a, b)  # warm-up: pick kernels, fault pages in
    flops = 2.0 * size**3
    best = float("inf")
    deadline = time.perf_counter() + seconds
    runs = 0
    while runs < 3 or time.perf_counter() < deadline:
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
        runs += 1
        if runs >= 50:
            break
    return flops / best


def device_peak_flops(device: torch.device, precision: str) -> float | None:
    """Peak FLOP/s MFU is measured against: bf16 tensor cores on GPUs, measured on CPUs."""
    if device.type == "cuda":
        return gpu_peak_flops(device)
    if device.type == "cpu":
        from rung.hardware import cpu_has_fast_bf16

        fast = precision == "bf16" or cpu_has_fast_bf16()
        return cpu_peak_flops(torch.bfloat16 if fast else torch.float32)
    return None


def unwrap(model: nn.Module) -> nn.Module:
    """The user's model inside DDP / torch.compile / peft wrappers."""
    seen = 0
    while seen < 8:
        seen += 1
        if hasattr(model, "module") and isinstance(model.module, nn.Module):  # DDP
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile
            model = model._orig_mod
        else:
            break
    return model


def flops_per_token(model: nn.Module, seq_len: int) -> float:
    """Training FLOPs per token: the model's ModelConfig if it has one, else 6 x parameters."""
    from rung.model_config import ModelConfig

    inner = unwrap(model)
    candidates = [inner]
    get_base = getattr(inner, "get_base_model", None)  # peft
    if callable(get_base):
        try:
            candidates.append(get_base())
        except Exception:  # noqa: BLE001 - a wrapper without a base model
            pass
    for candidate in candidates:
        config = getattr(candidate, "config", None)
        if isinstance(config, ModelConfig):
            return float(config.flops_per_token(seq_len))
    n = 0
    seen: set[int] = set()
    for p in inner.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            n += p.numel()
    hf = getattr(candidates[-1], "config", None)
    layers, dim = getattr(hf, "num_hidden_layers", None), getattr(hf, "hidden_size", None)
    attention = 12 * layers * dim * seq_len if isinstance(layers, int) and isinstance(dim, int) else 0
    return 6.0 * n + attention


def peak_memory_mb(device: torch.device) -> float:
    """CUDA: the most memory tensors held; CPU: the process's maximum resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    import sys

    return rss / 2**20 if sys.platform == "darwin" else rss / 1024

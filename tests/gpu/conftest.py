"""Fixtures of the `cuda`-marked tests: the device they run on, and matmuls without TF32.

Every test here runs on "cuda" when torch sees a GPU and on the CPU otherwise, where that part
of the GPU path can be checked there at all; a test with nothing to check on a CPU skips and
says why. `scripts/gpu-check.sh` runs them on a GPU; CI runs them on its CPU.
"""

from __future__ import annotations

import os

import pytest

# JAX takes 75% of a GPU's memory when it starts unless told otherwise; torch shares the GPU here.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

torch = pytest.importorskip("torch")


@pytest.fixture(autouse=True)
def _no_cpu_peak_probe(monkeypatch):
    """On a CPU the engine measures a bf16 matmul once for its MFU figure: ~20 s on a CPU
    without native bf16 (AVX2), for a number these tests never read. A fixed peak stands in."""
    monkeypatch.setenv("RUNG_CPU_PEAK_FLOPS", "1e11")


@pytest.fixture(scope="session")
def device() -> "torch.device":
    """The GPU torch sees (its current one), else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@pytest.fixture
def cuda_device(device) -> "torch.device":
    """The GPU; the test skips on a machine without one (what it checks needs CUDA)."""
    if device.type != "cuda":
        pytest.skip("needs a CUDA GPU (torch sees none): scripts/gpu-check.sh runs it on one")
    return device


@pytest.fixture
def exact_fp32():
    """fp32 matmuls in full fp32 on a GPU during the test: TF32 (which the training engine
    switches on for the whole process) rounds inputs to 10 bits and would hide nothing but
    blur the comparisons that expect equal numbers."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


@pytest.fixture(scope="session")
def byte_tokenizer():
    import rung

    return rung.tokenizer("byte")

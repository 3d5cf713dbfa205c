"""What the machine can do, framework-free: both engines pick "auto" precision from this."""

from __future__ import annotations

from functools import lru_cache


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
    """True on CPUs whose matmuls run bf16 natively (Intel AMX or AVX512-BF16): there bf16
    matmuls are ~3x faster than fp32, so bf16 autocast is the fastest safe way to train."""
    return bool({"amx_bf16", "avx512_bf16"} & cpu_flags())

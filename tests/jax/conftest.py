"""Settings for the jax tests.

Tests that need several devices (the 2x2 mesh) or a process to kill run JAX in subprocesses
started with `jax_env`: 4 simulated CPU devices, CPU only, and a persistent compilation cache
shared by this session's subprocesses (a resumed run loads the train step its first run
compiled). Nothing is set in this process's environment, so other test folders that import
JAX see their usual single CPU device.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.jax.helpers import RecordingRun, SmallStream  # noqa: F401

HERE = Path(__file__).parent
ROOT = HERE.parents[1]


@pytest.fixture(scope="session")
def jax_env(tmp_path_factory) -> dict[str, str]:
    cache = tmp_path_factory.mktemp("jax-cache")
    env = dict(os.environ)
    env.update({
        # opt level 0: LLVM spends far less time compiling; these tiny models do not care
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4 --xla_backend_optimization_level=0",
        "JAX_PLATFORMS": "cpu",
        "JAX_COMPILATION_CACHE_DIR": str(cache),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
        "PYTHONPATH": os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]),
    })
    return env

"""The contract tests train many tiny jax runs of the same shapes: compile each step once.

A persistent compilation cache in a folder of this session makes a later fit of the same
step load what an earlier one compiled (the cached program is the same program).
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def jax_compilation_cache(tmp_path_factory):
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    compilation_cache.set_cache_dir(str(tmp_path_factory.mktemp("jax-cache")))
    compilation_cache.reset_cache()  # a cache another test folder's jax set up (or not) is dropped
    yield

"""Fixtures of the rung-torch tests: tiny models (preset `test`) and the byte tokenizer."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


@pytest.fixture(scope="session")
def byte_tokenizer():
    import rung

    return rung.tokenizer("byte")


@pytest.fixture
def make_backend(byte_tokenizer):
    """A torch backend on the CPU with the `test` preset; `init_std` 0.3 so greedy text varies."""
    import rung

    def make(tokenizer=None, **options):
        architecture = {"init_std": 0.3, **options.pop("architecture", {})}
        return rung.backend("torch", tokenizer=tokenizer or byte_tokenizer, model=options.pop("model", "test"),
                            device="cpu", architecture=architecture, **options)

    return make

"""Fixtures of the rung-hf tests: the tiny checkpoints of `hf_models`, backends on them."""

from __future__ import annotations

from pathlib import Path

import pytest

from hf_models import FAMILIES, save_tiny_model


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("hf-models")
    return {family: save_tiny_model(family, base / family) for family in FAMILIES}


_backends: dict = {}


@pytest.fixture
def backend_of(model_dirs):
    """backend_of(family): an `hf` backend on that family's saved model (one per session)."""
    import rung

    def get(family: str):
        if family not in _backends:
            _backends[family] = rung.backend("hf", model=str(model_dirs[family]), max_tokens=12)
        return _backends[family]

    return get

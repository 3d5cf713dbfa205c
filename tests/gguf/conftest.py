"""Fixtures of the GGUF export tests: the models of `tests.gguf.models`, saved once a session."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("gguf")
pytest.importorskip("torch")

from tests.gguf.models import save_hf_llama, save_lora_adapter, save_rung_model  # noqa: E402


@pytest.fixture(scope="session")
def rung_model(tmp_path_factory) -> Path:
    return save_rung_model(tmp_path_factory.mktemp("gguf") / "rung-tiny" / "model")


@pytest.fixture(scope="session")
def hf_llama(tmp_path_factory) -> Path:
    return save_hf_llama(tmp_path_factory.mktemp("gguf") / "hf-llama")


@pytest.fixture(scope="session")
def lora_adapter(hf_llama, tmp_path_factory) -> Path:
    return save_lora_adapter(hf_llama, tmp_path_factory.mktemp("gguf") / "lora-adapter")

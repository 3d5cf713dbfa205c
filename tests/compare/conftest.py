"""Fixtures of the rung-compare tests: the fake OpenAI/Anthropic server on 127.0.0.1 (one per
module, user config in a temp dir), `rung compare` as a subprocess, and a tiny local model folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fake_llm_server import TEST_KEY as KEY
from tests.hosted_fixtures import _isolated, server  # noqa: F401  (fixtures)

RUNG = str(Path(sys.executable).with_name("rung"))
PLUGINS = "rung-openai,rung-anthropic,rung-compare,rung-eval,rung-lora,rung-torch"


@pytest.fixture
def compare_cli(tmp_path):
    """compare_cli(*args): `rung compare ARGS` in tmp_path, with the fake server's key in the
    environment; asserts nothing it printed holds the key."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "ANTHROPIC_"))}
    env.update(RUNG_CONFIG_DIR=str(tmp_path / "config"), RUNG_LOAD_PLUGINS=PLUGINS, OPENAI_API_KEY=KEY,
               ANTHROPIC_API_KEY=KEY, PYTHONUNBUFFERED="1", COLUMNS="200")
    outputs = []

    def run(*args, check=True):
        proc = subprocess.run([RUNG, "compare", *args], capture_output=True, text=True, env=env, cwd=tmp_path,
                              timeout=300)
        outputs.append(proc.stdout + proc.stderr)
        if check:
            assert proc.returncode == 0, proc.stderr
        return proc

    yield run
    for text in outputs:
        assert KEY not in text


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny rung torch Llama (random weights, byte tokenizer) saved as a model folder."""
    pytest.importorskip("torch")
    import rung

    folder = tmp_path_factory.mktemp("tiny") / "model"
    tokenizer = rung.tokenizer("byte")
    backend = rung.backend("torch", model="test", tokenizer=tokenizer, device="cpu", architecture={"init_std": 0.3})
    backend.save(folder)
    tokenizer.save(folder)
    return folder

"""A fake LLM API server on 127.0.0.1 for this folder's tests; user config in a temp dir."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for fake_llm_server

from fake_llm_server import TEST_KEY as KEY, FakeLLMServer



@pytest.fixture(scope="module")
def server():
    with FakeLLMServer(api_key=KEY) as running:
        running.max_requests = 500
        yield running


@pytest.fixture(autouse=True)
def _isolated(server, tmp_path, monkeypatch):
    server.reset()
    server.max_requests = 500
    monkeypatch.setenv("RUNG_CONFIG_DIR", str(tmp_path / "config"))
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_BASE_URL", "ANTHROPIC_AUTH_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    yield

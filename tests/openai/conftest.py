"""A fake LLM API server on 127.0.0.1 for this folder's tests; user config in a temp dir."""

from pathlib import Path

import pytest

# Never put tests/ itself on sys.path: its folders (torch, jax, openai...) would shadow the
# real packages. The repository root is on the path (pytest's `pythonpath`).
from tests.fake_llm_server import TEST_KEY as KEY, FakeLLMServer



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

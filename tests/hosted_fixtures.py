"""Fixtures for the hosted-API tests (openai, anthropic, prompt): a fake LLM API server on
127.0.0.1 per module, and a user config dir and environment of each test's own."""

import pytest

from tests.fake_llm_server import TEST_KEY as KEY, FakeLLMServer

__all__ = ["KEY", "server", "_isolated"]


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
    for name in (
        "OPENAI_API_KEY",
        "ANTHROPIC_API_KEY",
        "OPENAI_BASE_URL",
        "ANTHROPIC_BASE_URL",
        "ANTHROPIC_AUTH_TOKEN",
    ):
        monkeypatch.delenv(name, raising=False)
    yield

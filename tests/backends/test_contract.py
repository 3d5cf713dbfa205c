"""The backend contract (`rung.testing`) over every registered backend: torch, jax and hf on a
tiny model saved to disk, openai and anthropic against the local fake API server."""

from __future__ import annotations

import pytest

import rung
from rung.testing import BackendCase, BackendContract
from tests.backends.conftest import LOCAL
from tests.fake_llm_server import TEST_KEY
from tests.hosted_fixtures import _isolated, server  # noqa: F401  (fixtures)

LONG = " ".join(["the cat sat on the mat"] * 20)  # ~120 words: more than the local context (64)


def local_case(name, checkpoint, local_backend) -> BackendCase:
    return BackendCase(local_backend(name, checkpoint), prompt="the cat sat on the mat and", max_tokens=16,
                       too_long_prompt=LONG)


def openai_case(fake) -> BackendCase:
    backend = rung.backend("openai", base_url=fake.openai_base_url, api_key=TEST_KEY, model="gpt-test",
                           max_retries=0, timeout=10)
    return BackendCase(backend, deterministic={}, seeds="forwarded",
                       sent_seed=lambda: fake.requests[-1].body.get("seed"),
                       too_long_prompt=" ".join(["word"] * (fake.context_words + 1)))


def anthropic_case(fake) -> BackendCase:
    backend = rung.backend("anthropic", base_url=fake.anthropic_base_url, api_key=TEST_KEY,
                           model="claude-test", max_retries=0, timeout=10)
    return BackendCase(backend, deterministic={}, sampling={}, seeds="refused",  # the Messages API has no seed
                       too_long_prompt=" ".join(["word"] * (fake.context_words + 1)))


def llamacpp_case(checkpoint) -> BackendCase:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (bash scripts/ensure-llamacpp.sh)")
    backend = rung.backend("llamacpp", model=str(checkpoint), max_tokens=16)  # the folder, exported to GGUF
    return BackendCase(backend, prompt="the cat sat on the mat and", max_tokens=16, too_long_prompt=LONG)


CASES = {
    **{name: (lambda name: lambda fx: local_case(name, fx["checkpoint"], fx["local_backend"]))(name)
       for name in LOCAL},
    "openai": lambda fx: openai_case(fx["server"]),
    "anthropic": lambda fx: anthropic_case(fx["server"]),
    "llamacpp": lambda fx: llamacpp_case(fx["checkpoint"]),
}


def test_every_registered_backend_runs_the_contract():
    assert sorted(rung.get_plugins().registry.names("backend")) == sorted(CASES)


class TestEveryBackend(BackendContract):
    @pytest.fixture(scope="class", params=sorted(CASES))
    def backend_case(self, request, server, checkpoint, local_backend):  # noqa: F811
        return CASES[request.param]({"server": server, "checkpoint": checkpoint, "local_backend": local_backend})

"""A tiny rung torch model served by a real uvicorn server on 127.0.0.1, in a thread."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from tests.serve.serving import API_KEY, NAME, ServerThread  # noqa: E402


@pytest.fixture(scope="session")
def tiny_backend():
    import rung

    return rung.backend("torch", model="test", tokenizer=rung.tokenizer("byte"), device="cpu",
                        architecture={"init_std": 0.3})


@pytest.fixture(scope="module")
def served(tiny_backend):
    """The tiny model as NAME behind API_KEY."""
    from rung_serve.app import create_app

    with ServerThread(create_app({NAME: tiny_backend}, api_key=API_KEY)) as running:
        yield running


@pytest.fixture
def client(served):
    import openai

    return openai.OpenAI(base_url=served.url + "/v1", api_key=API_KEY, max_retries=0)

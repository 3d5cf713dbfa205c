"""rung serve on the hf backend (a tiny transformers Llama saved to disk and loaded back):
concurrent clients share one running decode batch (`HFBackend.decode_slots`) and each gets
the reply the backend's own generate gives it alone; a request for log-probabilities runs
through generate beside them; with `continuous_batching: false` the model answers one request
at a time, the same replies."""

from __future__ import annotations


import pytest


from tests.serve.serving import assert_served_as_alone

openai = pytest.importorskip("openai")
pytest.importorskip("transformers")

CLIENTS = 8


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    from tests.hf.hf_models import save_tiny_model

    return save_tiny_model("llama", tmp_path_factory.mktemp("hf-serve") / "llama")


def bodies() -> list[dict]:
    """Requests of different lengths, chat and completions, streamed and not, greedy and seeded."""
    words = "the cat sat on a mat and the dog ran to the park".split()
    out = []
    for i in range(CLIENTS):
        text = " ".join(words[: 2 + (3 * i) % 10])
        body: dict = {"max_tokens": 10 + (i * 7) % 23, "temperature": 0}
        if i % 3 == 2:
            body.update(temperature=1.0, top_p=0.9, seed=i)
        if i % 2:
            body["messages"] = [{"role": "user", "content": text}]
        else:
            body["prompt"] = text
        body["stream"] = i % 4 in (1, 2)
        out.append(body)
    return out


def test_concurrent_clients_share_the_batch_and_each_get_the_reply_generate_gives_alone(llama_dir):
    import rung

    backend = rung.backend("hf", model=str(llama_dir))
    off = rung.backend("hf", model=str(llama_dir), continuous_batching=False)
    assert_served_as_alone(backend, off, bodies())

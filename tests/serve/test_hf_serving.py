"""rung serve on the hf backend (a tiny transformers Llama saved to disk and loaded back):
concurrent clients share one running decode batch (`HFBackend.decode_slots`) and each gets
the reply the backend's own generate gives it alone; a request for log-probabilities runs
through generate beside them; with `continuous_batching: false` the model answers one request
at a time, the same replies."""

from __future__ import annotations


import pytest


from tests.serve.serving import assert_served_as_alone, mixed_bodies

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
    return mixed_bodies([" ".join(words[: 2 + (3 * i) % 10]) for i in range(CLIENTS)],
                        [10 + (i * 7) % 23 for i in range(CLIENTS)])


def test_concurrent_clients_share_the_batch_and_each_get_the_reply_generate_gives_alone(llama_dir):
    import rung

    backend = rung.backend("hf", model=str(llama_dir))
    off = rung.backend("hf", model=str(llama_dir), continuous_batching=False)
    assert_served_as_alone(backend, off, bodies())

"""rung serve on the jax backend (rung's `test` preset in JAX, a byte tokenizer with rung's chat
template): concurrent clients share one running decode batch (`JaxBackend.decode_slots`,
rung_jax.slots) and each gets the reply the backend's own generate gives it alone; a request
for log-probabilities runs through generate beside them; with `continuous_batching: false` the
model answers one request at a time, the same replies."""

from __future__ import annotations


import pytest


from tests.serve.serving import assert_served_as_alone, mixed_bodies

openai = pytest.importorskip("openai")
pytest.importorskip("jax")

CLIENTS = 8


def bodies() -> list[dict]:
    """Requests of different lengths, chat and completions, streamed and not, greedy and seeded
    (short: prompts under 32 tokens, few new ones, so generate compiles few programs)."""
    words = "the cat sat on a mat".split()
    return mixed_bodies([" ".join(words[: 1 + i % 4]) for i in range(CLIENTS)],
                        [6 + (i * 5) % 13 for i in range(CLIENTS)])


def make_backend(**options):
    import rung

    return rung.backend("jax", model="test", tokenizer=rung.tokenizer("byte", chat_template="rung"),
                        architecture={"init_std": 0.3}, **options)


def test_concurrent_clients_share_the_batch_and_each_get_the_reply_generate_gives_alone():
    backend = make_backend()
    off = make_backend(continuous_batching=False)
    assert_served_as_alone(backend, off, bodies())

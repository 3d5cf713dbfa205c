"""min_p, the repetition penalty and token healing on the jax backend: one tiny model, few
compiled programs (the knobs are traced: changing them never recompiles)."""

from __future__ import annotations

import pytest

from rung.records import GenerationRequest
from tests.decoding.code_models import check_healed, code_tokenizer

pytest.importorskip("jax")


def test_sampling_options_jax():
    import rung

    tokenizer = code_tokenizer()
    backend = rung.backend("jax", tokenizer=tokenizer, model="test",
                           architecture={"vocab_size": tokenizer.vocab_size, "init_std": 0.05})
    # token healing: the constrained programs (a mask on the first step only)
    for prompt in ("def ", "def pri", "def name(x):\n    ret"):
        check_healed(backend, prompt, repetition_penalty=1.2)

    # min_p and the penalty: the whole-loop program, one compilation for every setting
    def text(**fields):
        return backend.generate(GenerationRequest(prompt="import os", raw=True, max_tokens=16, **fields)).text

    greedy = text()
    penalized = text(repetition_penalty=1.5)
    assert penalized != greedy
    assert text(temperature=1.5, seed=1) != greedy  # sampling wanders off the argmax...
    assert text(temperature=1.5, seed=1, min_p=1.0) == greedy  # ...unless min_p leaves only it

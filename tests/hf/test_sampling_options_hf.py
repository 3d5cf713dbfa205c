"""min_p, the repetition penalty and token healing on the hf backend (transformers' generate),
on a tiny saved GPT-2 whose byte-level BPE was trained for it."""

from __future__ import annotations

import pytest

from hf_models import save_tiny_model
from rung.records import GenerationRequest
from tests.decoding.code_models import check_healed, first_tokens_unhealed

pytest.importorskip("transformers")

PROMPTS = ("the cat ", "the ca", "rivers and st")


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    import rung

    folder = save_tiny_model("gpt2", tmp_path_factory.mktemp("hf-sampling") / "gpt2")
    return rung.backend("hf", model=str(folder), max_tokens=12)


def test_token_healing_hf(gpt2):
    for prompt in PROMPTS:
        check_healed(gpt2, prompt)
        check_healed(gpt2, prompt, temperature=1.0, seed=2, repetition_penalty=1.2)
    assert not all(first_tokens_unhealed(gpt2, PROMPTS))
    batch = gpt2.generate_batch([GenerationRequest(prompt=p, raw=True, max_tokens=6, token_healing=True)
                                 for p in PROMPTS])
    assert [c.text for c in batch] == [gpt2.generate(GenerationRequest(prompt=p, raw=True, max_tokens=6,
                                                                       token_healing=True)).text for p in PROMPTS]


def test_min_p_one_samples_the_greedy_text(gpt2):
    def text(**fields):
        return gpt2.generate(GenerationRequest(prompt="the cat", raw=True, max_tokens=12, **fields)).text

    greedy = text()
    assert text(temperature=1.5, seed=1) != greedy  # sampling wanders off the argmax...
    assert text(temperature=1.5, seed=1, min_p=1.0) == greedy  # ...unless min_p leaves only it


def test_repetition_penalty_changes_greedy_text_and_backend_default(gpt2, tmp_path):
    import rung

    plain = gpt2.generate(GenerationRequest(prompt="the cat", raw=True, max_tokens=12)).text
    penalized = gpt2.generate(GenerationRequest(prompt="the cat", raw=True, max_tokens=12, repetition_penalty=2.0))
    assert penalized.text != plain
    defaulted = rung.backend("hf", model=gpt2.options.model, repetition_penalty=2.0, max_tokens=12)
    assert defaulted.generate(GenerationRequest(prompt="the cat", raw=True)).text == penalized.text

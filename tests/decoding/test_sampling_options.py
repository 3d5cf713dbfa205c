"""min_p, the repetition penalty and token healing: the core's checks and healing, torch's
pickers against transformers' processors, and real tiny torch models decoding with them
(generate, stream, continuous batching, the RL sampler, `rung prompt`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rung.errors import RungError
from rung.records import GenerationRequest
from tests.decoding.code_models import check_healed, code_tokenizer, first_tokens_unhealed

torch = pytest.importorskip("torch")

RUNG = str(Path(sys.executable).with_name("rung"))
PROMPTS = ("def ", "def pri", "def name(x):\n    ret")  # a trailing space, mid-word, mid-keyword


def _sampling(**fields):
    from rung.decoding import Sampling

    return Sampling(max_tokens=1, **fields)


# ----------------------------------------------------------------------------- checks


@pytest.mark.parametrize("fields, says", [
    (dict(min_p=1.5), "min_p must be in [0, 1]"),
    (dict(min_p=-0.1), "min_p must be in [0, 1]"),
    (dict(repetition_penalty=0.0), "repetition_penalty must be above 0"),
    (dict(repetition_penalty=-1.2), "repetition_penalty must be above 0"),
])
def test_bad_values_are_one_line(fields, says):
    with pytest.raises(RungError) as caught:
        GenerationRequest(prompt="x", **fields)
    assert says in str(caught.value) and "\n" not in str(caught.value)
    assert isinstance(caught.value, ValueError)  # rung serve answers ValueErrors with a 400


# ----------------------------------------------------------------------------- the pickers


def _draws(logits: torch.Tensor, sampling, count: int = 400) -> set[int]:
    from rung_torch.picking import choose

    generators = [torch.Generator().manual_seed(seed) for seed in range(count)]
    return set(choose(logits.expand(count, -1), [sampling] * count, generators).tolist())


def test_min_p_keeps_exactly_the_tokens_within_its_share_after_temperature():
    logits = torch.tensor([0.5, 0.3, 0.1, 0.06, 0.04]).log()
    # temperature 1: shares of the best 1, .6, .2, .12, .08 -> at 0.4 the first two stay
    assert _draws(logits, _sampling(temperature=1.0, min_p=0.4)) == {0, 1}
    # temperature 2 flattens them (1, .77, .45, .35, .28): the third passes 0.4 too
    assert _draws(logits, _sampling(temperature=2.0, min_p=0.4)) == {0, 1, 2}
    assert _draws(logits, _sampling(temperature=1.0)) == {0, 1, 2, 3, 4}  # off: every token is drawn


def test_min_p_agrees_with_transformers_warper():
    from transformers import MinPLogitsWarper

    from rung_torch.picking import choose

    scores = torch.randn(1, 64, generator=torch.Generator().manual_seed(3)) * 2
    expected = torch.isfinite(MinPLogitsWarper(0.1)(None, scores.clone()))[0]
    drawn = _draws(scores, _sampling(temperature=1.0, min_p=0.1), count=600)
    assert drawn <= set(expected.nonzero()[:, 0].tolist())  # never a token transformers drops
    assert len(drawn) >= 2
    greedy = choose(scores, [_sampling(min_p=0.1)], [None])  # min_p never changes the argmax
    assert greedy.item() == scores.argmax().item()


def test_repetition_penalty_equals_transformers_processor():
    from transformers import RepetitionPenaltyLogitsProcessor

    from rung_torch.picking import choose, penalize

    scores = torch.randn(2, 30, generator=torch.Generator().manual_seed(0)) * 3
    history = torch.tensor([[1, 5, 5, 7, 12], [0, 2, 29, 3, 3]])
    expected = RepetitionPenaltyLogitsProcessor(1.3)(history, scores.clone())
    seen = torch.zeros(2, 30, dtype=torch.bool)
    seen.scatter_(1, history, True)
    rows = [_sampling(repetition_penalty=1.3)] * 2
    torch.testing.assert_close(penalize(scores, rows, seen), expected, rtol=0, atol=0)
    assert not torch.equal(expected, scores)
    picked = choose(scores, rows, [None, None], seen=seen)  # greedy rows are penalized too
    assert picked.tolist() == expected.argmax(-1).tolist()
    assert seen[[0, 1], picked].all()  # the picks are seen from now on


# ----------------------------------------------------------------------------- token healing (core)


def test_heal_backs_up_the_last_token_and_allows_only_its_extensions():
    from rung.decoding.healing import heal
    from rung.decoding.structured import vocabulary

    tokenizer = code_tokenizer()
    tokens = vocabulary(tokenizer).tokens
    ids = tokenizer.encode("def ")
    healed, healing = heal(ids, tokenizer)
    assert healed == ids[:-1] and healing.text == " " == tokenizer.decode(ids[-1:])
    allowed = {tokenizer.decode([i]) for i in healing.ids}
    assert " name" in allowed and " print" in allowed and "def" not in allowed
    assert healing.ids == sorted(i for i, b in enumerate(tokens) if b and b.startswith(b" "))
    assert heal(ids[:1], tokenizer) == (ids[:1], None)  # one token: nothing to back up to


# ----------------------------------------------------------------------------- real torch models


@pytest.fixture(scope="module")
def code_model(tmp_path_factory):
    """A tiny torch model on the code tokenizer, saved and loaded back: (backend, folder)."""
    import rung

    tokenizer = code_tokenizer()
    folder = tmp_path_factory.mktemp("code-model") / "model"
    made = rung.backend("torch", tokenizer=tokenizer, model="test", device="cpu",
                        architecture={"vocab_size": tokenizer.vocab_size, "init_std": 0.3})
    made.save(folder)
    return rung.backend("torch", model=str(folder), device="cpu"), folder


def test_token_healing_torch(code_model):
    backend, _ = code_model
    for prompt in PROMPTS:
        check_healed(backend, prompt)
        check_healed(backend, prompt, temperature=1.0, seed=4, min_p=0.05, repetition_penalty=1.2)
    assert not all(first_tokens_unhealed(backend, PROMPTS))  # unhealed, some first token does not extend


def test_token_healing_refused_with_a_constraint_and_skipped_for_token_prompts(code_model):
    backend, _ = code_model
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    with pytest.raises(RungError, match="token healing and a constraint"):
        backend.generate(GenerationRequest(prompt="def ", raw=True, max_tokens=20, token_healing=True,
                                           constraint=schema))
    ids = tuple(backend.tokenizer.encode("def "))
    done = backend.generate(GenerationRequest(prompt="", prompt_ids=ids, max_tokens=2, token_healing=True))
    assert done.usage.prompt_tokens == len(ids)  # a token prompt is decoded as given


def _drain(slots, wanted: set[int]) -> dict[int, str]:
    texts = {slot: "" for slot in wanted}
    while wanted:
        for slot, delta in slots.step():
            texts[slot] += delta.text
            if delta.finish_reason is not None:
                wanted.discard(slot)
    return texts


def test_continuous_batching_heals_and_penalizes_as_generate(code_model):
    backend, _ = code_model
    requests = [GenerationRequest(prompt=p, raw=True, max_tokens=8, token_healing=True, repetition_penalty=1.5)
                for p in PROMPTS] + [GenerationRequest(prompt="import os", raw=True, max_tokens=8)]
    alone = [backend.generate(r).text for r in requests]
    slots = backend.decode_slots(max_slots=4)
    ids = [slots.add(r) for r in requests]
    texts = _drain(slots, set(ids))
    assert [texts[i] for i in ids] == alone


@pytest.fixture(scope="module")
def looping_backend():
    """A tiny byte-level torch model whose greedy text is one character over and over."""
    import rung

    return rung.backend("torch", tokenizer=rung.tokenizer("byte"), model="test", device="cpu",
                        architecture={"init_std": 0.05})


def test_repetition_penalty_breaks_a_greedy_loop(looping_backend):
    plain = looping_backend.generate(GenerationRequest(prompt="the cat sat", raw=True, max_tokens=30)).text
    assert len(set(plain)) == 1  # the loop this model falls into
    penalized = looping_backend.generate(GenerationRequest(prompt="the cat sat", raw=True, max_tokens=30,
                                                           repetition_penalty=1.5)).text
    assert penalized != plain


def test_rl_sampler_penalizes_as_generate(looping_backend):
    from rung.decoding import Sampling
    from rung_torch.sampling import sample_tokens

    tokenizer = looping_backend.tokenizer
    prompts = [tokenizer.encode("the cat sat"), tokenizer.encode("a dog")]
    ids = sample_tokens(looping_backend.model, prompts, Sampling(max_tokens=12, repetition_penalty=1.5))
    for prompt, row in zip(("the cat sat", "a dog"), ids):
        done = looping_backend.generate(GenerationRequest(prompt=prompt, raw=True, max_tokens=12,
                                                          repetition_penalty=1.5))
        assert tokenizer.decode(row) == done.text


# ----------------------------------------------------------------------------- rung prompt


def test_rung_prompt_refuses_a_bad_value_in_one_line(code_model):
    _, folder = code_model
    result = subprocess.run([RUNG, "prompt", "-b", "torch", "-m", str(folder), "--raw", "--no-log", "--min-p", "1.5",
                             "--repetition-penalty", "1.2", "def "], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "min_p must be in [0, 1]" in lines[0], result.stderr


def test_rung_prompt_heals_with_the_options(code_model):
    backend, folder = code_model
    flags = ["--token-healing", "--repetition-penalty", "1.2", "--min-p", "0.05", "--max-tokens", "6"]
    result = subprocess.run([RUNG, "prompt", "-b", "torch", "-m", str(folder), "--raw", "--no-log", *flags, "def "],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    expected = backend.generate(GenerationRequest(prompt="def ", raw=True, max_tokens=6, token_healing=True,
                                                  repetition_penalty=1.2, min_p=0.05))
    assert result.stdout.rstrip("\n") == expected.text.rstrip("\n")

"""Log-probabilities from every local backend (torch, jax, hf) on one saved checkpoint, checked
against an independent forward pass over prompt + completion: rung-torch's module forward
(not its decoding path) on the same weights, whose log-softmax every backend must reproduce."""

from __future__ import annotations

import pytest

from rung.records import GenerationRequest
from tests.backends.conftest import LOCAL

PROMPT = "the cat sat on the mat and"
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def reference(checkpoint):
    """log_softmax over every position of `ids`, from rung-torch's model called as a module."""
    import torch

    from rung_torch.weights import load_model

    model = load_model(checkpoint, device=torch.device("cpu")).eval()

    def logprobs(ids: list[int]) -> torch.Tensor:
        with torch.no_grad():
            return model(torch.tensor([ids])).float().log_softmax(-1)[0]

    return logprobs


def scored(backend, **options):
    return backend.generate(GenerationRequest(prompt=PROMPT, temperature=0, **options))


def assert_matches(entries, ids, start, table, top):
    """entries[j] is the token at position start + j; `table` (T, V) the reference log-probs."""
    for j, entry in enumerate(entries):
        expected = table[start + j - 1]
        assert entry.id == ids[start + j]
        assert entry.logprob == pytest.approx(float(expected[entry.id]), abs=TOLERANCE)
        assert len(entry.top) == top
        values = [v for _, v in entry.top]
        assert values == sorted(values, reverse=True)
        best = expected.topk(top).values.tolist() if top else []
        assert values == pytest.approx(best, abs=TOLERANCE)


@pytest.mark.parametrize("name", LOCAL)
def test_greedy_logprobs_and_echo_equal_a_forward_pass(name, checkpoint, local_backend, reference):
    backend = local_backend(name, checkpoint)
    assert backend.capabilities.logprobs
    done = scored(backend, max_tokens=10, logprobs=4, echo=True)
    prompt, generated = done.prompt_logprobs, done.logprobs
    assert prompt[0].logprob is None and prompt[0].top == ()
    assert len(prompt) == done.usage.prompt_tokens and generated
    ids = [t.id for t in prompt] + [t.id for t in generated]
    table = reference(ids)
    assert_matches(prompt[1:], ids, 1, table, 4)
    assert_matches(generated, ids, len(prompt), table, 4)
    # Greedy: the chosen token is the most likely one, first in its top list.
    assert all(t.top[0] == (t.token, t.logprob) for t in generated)
    assert "".join(t.token for t in generated) == done.text
    # Asking for log-probabilities does not change what is generated.
    plain = scored(backend, max_tokens=10)
    assert plain.text == done.text and plain.logprobs is None and plain.prompt_logprobs is None


@pytest.mark.parametrize("name", LOCAL)
def test_echo_with_max_tokens_0_scores_the_prompt_only(name, checkpoint, local_backend, reference):
    backend = local_backend(name, checkpoint)
    done = scored(backend, max_tokens=0, logprobs=0, echo=True)
    assert (done.text, done.finish_reason, done.logprobs, done.usage.completion_tokens) == ("", "length", (), 0)
    ids = [t.id for t in done.prompt_logprobs]
    assert_matches(done.prompt_logprobs[1:], ids, 1, reference(ids), 0)
    streamed = list(backend.stream(GenerationRequest(prompt=PROMPT, max_tokens=0, logprobs=0, echo=True)))
    assert [(d.text, d.finish_reason) for d in streamed] == [("", "length")]


@pytest.mark.parametrize("name", LOCAL)
def test_stream_hands_out_each_tokens_logprob_with_its_text(name, checkpoint, local_backend):
    backend = local_backend(name, checkpoint)
    whole = scored(backend, max_tokens=12, logprobs=2)
    deltas = list(backend.stream(GenerationRequest(prompt=PROMPT, temperature=0, max_tokens=12, logprobs=2)))
    assert "".join(d.text for d in deltas) == whole.text
    streamed = [t for d in deltas for t in (d.logprobs or ())]
    assert [(t.id, t.top) for t in streamed] == [(t.id, t.top) for t in whole.logprobs]
    assert [t.logprob for t in streamed] == pytest.approx([t.logprob for t in whole.logprobs], abs=TOLERANCE)
    for delta in deltas:  # each delta carries the tokens whose text it shows
        assert "".join(t.token for t in delta.logprobs or ()) == delta.text


@pytest.mark.parametrize("name", LOCAL)
def test_sampled_tokens_are_scored_by_the_models_own_distribution(name, checkpoint, local_backend, reference):
    """At temperature 1.5 with top-k 5 the log-probabilities are still the model's raw ones."""
    backend = local_backend(name, checkpoint)
    done = backend.generate(GenerationRequest(prompt=PROMPT, max_tokens=8, temperature=1.5, top_k=5, seed=3,
                                              logprobs=1, echo=True))
    ids = [t.id for t in done.prompt_logprobs] + [t.id for t in done.logprobs]
    assert_matches(done.logprobs, ids, len(done.prompt_logprobs), reference(ids), 1)


@pytest.mark.parametrize("name", LOCAL)
def test_a_stop_string_drops_the_tokens_past_it(name, checkpoint, local_backend):
    backend = local_backend(name, checkpoint)
    free = scored(backend, max_tokens=12, logprobs=0)
    assert len(free.logprobs) > 4
    stop = free.logprobs[3].token.strip() or free.logprobs[3].token  # a word of the greedy answer
    cut = free.text.find(stop)
    stopped = scored(backend, max_tokens=12, logprobs=0, stop=[stop])
    assert stopped.text == free.text[:cut] and stopped.finish_reason == "stop"
    joined = "".join(t.token for t in stopped.logprobs)
    # The kept tokens cover the text and no token starts at or past the stop string.
    assert joined.startswith(stopped.text)
    assert len("".join(t.token for t in stopped.logprobs[:-1])) < max(cut, 1)


def test_bad_settings_are_one_line_errors(checkpoint, local_backend):
    from rung.errors import RungError

    backend = local_backend("torch", checkpoint)
    with pytest.raises(RungError, match=r"^max_tokens must be at least 1, got 0$"):
        scored(backend, max_tokens=0, logprobs=1)
    echoed = scored(backend, max_tokens=0, echo=True)  # echo alone: the prompt back, nothing scored or generated
    assert (echoed.text, echoed.usage.completion_tokens, echoed.logprobs) == ("", 0, None)
    with pytest.raises(RungError, match="logprobs must be 0"):
        scored(backend, max_tokens=2, logprobs=-1)

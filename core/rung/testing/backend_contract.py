"""The backend contract: what every `Backend` must do, as pytest tests any plugin can run on itself.

Subclass `BackendContract` in a test module and give it a `backend_case` fixture that returns
a `BackendCase` (the backend, and which parts of the contract apply to it); pytest then runs
every test below against it::

    import pytest
    from rung.testing import BackendCase, BackendContract

    class TestMyBackendContract(BackendContract):
        @pytest.fixture(scope="class")
        def backend_case(self):
            return BackendCase(rung.backend("mine", ...), prompt="the cat sat on", too_long_prompt="x " * 10_000)

The contract: a stream joins to what generate returns (text, finish reason, usage); stop
strings end the text before them with finish_reason "stop", in generate and stream; seeds
(local: the same seed samples the same text, another seed another; hosted: the seed reaches
the API, or is refused in one line); a prompt too long for the context is a one-line
RungError; usage counts are positive and consistent; generate_batch equals one request at a
time; agenerate and astream equal generate and stream. A part that cannot apply to a backend
is declared in its case (`not_applicable`, with the reason), never skipped silently: the test
reports it as skipped with that reason.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import pytest

from rung.errors import RungError
from rung.records import Completion, GenerationRequest

TESTS = ("test_stream_joins_to_generate", "test_stop_strings", "test_seeds", "test_context_errors", "test_usage",
         "test_batch_equals_one_by_one", "test_async_equals_sync")


@dataclass
class BackendCase:
    """One backend under the contract, and what of it applies.

    `prompt`: text the backend answers at some length (at least 8 characters within
    `max_tokens`: the stop-string test picks a stop from inside the answer). `deterministic`:
    request fields that make answers repeatable (greedy decoding; {} for a server that always
    answers alike). `sampling`: fields of a sampled request, for the seed test. `seeds`:
    "reproducible" (same seed, same text; another seed, another text), "forwarded" (the seed
    reaches the API: `sent_seed()` returns what the last request carried) or "refused" (a
    seed is a one-line RungError). `too_long_prompt`: a prompt the model's context cannot
    hold (None: declare why in `not_applicable["test_context_errors"]`). `not_applicable`:
    test name -> why it does not apply to this backend.
    """

    backend: Any
    prompt: str = "the cat sat on the mat"
    max_tokens: int = 12
    deterministic: Mapping[str, Any] = field(default_factory=lambda: {"temperature": 0.0})
    sampling: Mapping[str, Any] = field(default_factory=lambda: {"temperature": 1.0})
    seeds: Literal["reproducible", "forwarded", "refused"] = "reproducible"
    sent_seed: Callable[[], int | None] | None = None
    too_long_prompt: str | None = None
    not_applicable: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = set(self.not_applicable) - set(TESTS)
        if unknown:
            raise ValueError(f"not_applicable names no contract test: {sorted(unknown)} (tests: {', '.join(TESTS)})")
        if self.seeds not in ("reproducible", "forwarded", "refused"):
            raise ValueError(f"seeds must be reproducible, forwarded or refused, not {self.seeds!r}")
        if self.seeds == "forwarded" and self.sent_seed is None:
            raise ValueError("seeds='forwarded' needs sent_seed: how to read the seed the API received")
        if self.too_long_prompt is None and "test_context_errors" not in self.not_applicable:
            raise ValueError("give too_long_prompt, or say in not_applicable why test_context_errors does not apply")

    def request(self, prompt: str | None = None, **fields: Any) -> GenerationRequest:
        """A deterministic request of `prompt` (the case's own by default)."""
        settings = {"max_tokens": self.max_tokens, **self.deterministic, **fields}
        return GenerationRequest(prompt=self.prompt if prompt is None else prompt, **settings)

    def applies(self, test: str) -> None:
        if test in self.not_applicable:
            pytest.skip(f"declared not applicable: {self.not_applicable[test]}")


def _outcome(done: Completion) -> tuple:
    return done.text, done.finish_reason, done.usage


def _joined(deltas: list) -> tuple[str, Any, Any]:
    assert deltas, "the stream yielded nothing"
    assert all(d.finish_reason is None for d in deltas[:-1]), "only the last delta may carry a finish_reason"
    return "".join(d.text for d in deltas), deltas[-1].finish_reason, deltas[-1].usage


def _stop_inside(text: str) -> str:
    """Two characters from the middle of `text` (not its start: text must survive before it)."""
    assert len(text) >= 8, f"the case's prompt must be answered with at least 8 characters; got {text!r}"
    for start in range(max(2, len(text) // 3), len(text) - 1):
        stop = text[start:start + 2]
        if "\ufffd" not in stop and stop.strip() and text.find(stop) > 0:
            return stop
    raise AssertionError(f"no stop string to pick inside {text!r}")


class BackendContract:
    """The contract tests; a subclass provides the `backend_case` fixture (see the module docstring)."""

    @pytest.fixture
    def case(self, backend_case: BackendCase, request: Any) -> BackendCase:
        backend_case.applies(request.node.originalname)
        return backend_case

    def test_stream_joins_to_generate(self, case: BackendCase) -> None:
        request = case.request()
        done = case.backend.generate(request)
        text, finish, usage = _joined(list(case.backend.stream(request)))
        assert (text, finish, usage) == _outcome(done)
        assert done.finish_reason in ("stop", "length")

    def test_stop_strings(self, case: BackendCase) -> None:
        full = case.backend.generate(case.request())
        stop = _stop_inside(full.text)
        expected = full.text[:full.text.find(stop)]
        request = case.request(stop=[stop, "\x00never-seen\x00"])
        done = case.backend.generate(request)
        assert (done.text, done.finish_reason) == (expected, "stop")
        deltas = list(case.backend.stream(request))
        assert _joined(deltas)[:2] == (expected, "stop")
        assert not any(stop in d.text for d in deltas)

    def test_seeds(self, case: BackendCase) -> None:
        sampled = case.request(**case.sampling)
        ask = lambda seed: replace(sampled, seed=seed)  # noqa: E731
        if case.seeds == "refused":
            with pytest.raises(RungError) as caught:
                case.backend.generate(ask(7))
            assert "\n" not in str(caught.value)
            return
        first = case.backend.generate(ask(7))
        if case.seeds == "forwarded":
            assert case.sent_seed() == 7
            return
        assert case.backend.generate(ask(7)).text == first.text
        others = {case.backend.generate(ask(seed)).text for seed in (1, 2, 3)}
        assert others != {first.text}, "every seed sampled the same text: the seed is not used"

    def test_context_errors(self, case: BackendCase) -> None:
        request = case.request(case.too_long_prompt, max_tokens=1)
        with pytest.raises(RungError) as caught:
            case.backend.generate(request)
        assert str(caught.value) and "\n" not in str(caught.value)
        with pytest.raises(RungError) as streamed:
            list(case.backend.stream(request))
        assert "\n" not in str(streamed.value)

    def test_usage(self, case: BackendCase) -> None:
        done = case.backend.generate(case.request())
        assert done.usage.prompt_tokens > 0 and 0 < done.usage.completion_tokens <= case.max_tokens
        if done.finish_reason == "length":
            assert done.usage.completion_tokens == case.max_tokens
        short = case.backend.generate(case.request(max_tokens=1))
        assert (short.usage.completion_tokens, short.usage.prompt_tokens) == (1, done.usage.prompt_tokens)
        longer = case.backend.generate(case.request(case.prompt + " " + case.prompt))
        assert longer.usage.prompt_tokens > done.usage.prompt_tokens

    def test_batch_equals_one_by_one(self, case: BackendCase) -> None:
        words = case.prompt.split()
        requests = [case.request(), case.request(" ".join(reversed(words))), case.request(words[0], max_tokens=3)]
        batched = case.backend.generate_batch(requests)
        alone = [case.backend.generate(r) for r in requests]
        assert [_outcome(c) for c in batched] == [_outcome(c) for c in alone]

    def test_async_equals_sync(self, case: BackendCase) -> None:
        request = case.request()

        async def both() -> tuple[Completion, list]:
            done = await case.backend.agenerate(request)
            return done, [d async for d in case.backend.astream(request)]

        done, deltas = asyncio.run(both())
        sync = case.backend.generate(request)
        assert _outcome(done) == _outcome(sync)
        assert _joined(deltas) == _outcome(sync)

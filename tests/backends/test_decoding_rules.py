"""The decoding rules every local backend shares (`rung.decoding`), checked on torch, jax and hf
with the same model on disk: a model without a chat template continues messages as text,
`raw=True` does the same for a chat model, and max_tokens and the context are checked alike."""

from __future__ import annotations

import pytest

from rung import GenerationRequest, Message, RungError
from rung.transformers_tokenizer import TransformersTokenizer
from tests.backends.conftest import CONTEXT, LOCAL

CHAT = [Message("system", "Complete the line."), Message("user", "the cat sat on the mat and")]


def greedy(**kw) -> GenerationRequest:
    return GenerationRequest(temperature=0, max_tokens=10, **kw)


def outcome(done):
    return done.text, done.finish_reason, done.usage


@pytest.mark.parametrize("saved_by", ["rung", "transformers"])
@pytest.mark.parametrize("name", LOCAL)
def test_without_a_chat_template_messages_are_continued_as_plain_text(name, saved_by, request, local_backend):
    folder = request.getfixturevalue("checkpoint" if saved_by == "rung" else "transformers_checkpoint")
    backend = local_backend(name, folder)
    assert backend.tokenizer.chat_template is None
    if saved_by == "transformers":  # every backend reads it through the one transformers adapter
        assert isinstance(backend.tokenizer, TransformersTokenizer)
    one = backend.generate(greedy(messages=CHAT[1:]))
    assert outcome(one) == outcome(backend.generate(greedy(prompt="the cat sat on the mat and")))
    both = backend.generate(greedy(messages=CHAT))  # the system first, one newline between contents
    assert outcome(both) == outcome(backend.generate(greedy(prompt="Complete the line.\nthe cat sat on the mat and")))
    streamed = list(backend.stream(greedy(messages=CHAT)))
    assert "".join(d.text for d in streamed) == both.text and streamed[-1].usage == both.usage


@pytest.mark.parametrize("name", LOCAL)
def test_raw_continues_a_chat_model_as_plain_text(name, chat_checkpoint, local_backend):
    backend = local_backend(name, chat_checkpoint)
    templated = backend.tokenizer.apply_chat_template(CHAT)
    assert templated.endswith("<|assistant|>\n")
    chat = backend.generate(greedy(messages=CHAT))
    assert chat.usage.prompt_tokens == len(backend.tokenizer.encode(templated))  # through the template
    raw = backend.generate(greedy(messages=CHAT, raw=True))
    assert outcome(raw) == outcome(backend.generate(greedy(prompt="Complete the line.\nthe cat sat on the mat and")))
    assert raw.usage.prompt_tokens < chat.usage.prompt_tokens


def test_the_same_answers_and_errors_on_every_local_backend(checkpoint, local_backend):
    backends = {name: local_backend(name, checkpoint) for name in LOCAL}
    answers = {name: outcome(b.generate(greedy(messages=CHAT))) for name, b in backends.items()}
    assert len(set(answers.values())) == 1, answers  # one model, one decoding stack: one answer

    def error(backend, request) -> str:
        with pytest.raises(RungError) as caught:
            backend.generate(request)
        with pytest.raises(RungError) as streamed:
            list(backend.stream(request))
        assert str(streamed.value) == str(caught.value)
        return str(caught.value)

    zero = {error(b, GenerationRequest(prompt="the cat", max_tokens=0)) for b in backends.values()}
    assert zero == {"max_tokens must be at least 1, got 0"}

    prompt = "the cat sat on the mat and the dog ran to the park"
    n = backends["torch"].count_tokens(prompt)
    assert {b.count_tokens(prompt) for b in backends.values()} == {n} and n < CONTEXT
    for b in backends.values():  # exactly fits: prompt + max_tokens == context
        done = b.generate(GenerationRequest(prompt=prompt, max_tokens=CONTEXT - n, temperature=0))
        assert done.usage.prompt_tokens == n and done.usage.completion_tokens <= CONTEXT - n
    over = {error(b, GenerationRequest(prompt=prompt, max_tokens=CONTEXT - n + 1)) for b in backends.values()}
    assert over == {f"the prompt ({n} tokens) plus max_tokens ({CONTEXT - n + 1}) is {CONTEXT + 1} tokens, more "
                    f"than the model's context of {CONTEXT}; shorten the prompt or lower max_tokens"}
    # Unset, max_tokens is the backend's default lowered to the room left; no room is one error.
    full = " ".join(["the cat"] * CONTEXT)
    assert all(b.count_tokens(full) >= CONTEXT for b in backends.values())
    no_room = {error(b, GenerationRequest(prompt=full)) for b in backends.values()}
    assert len(no_room) == 1 and "which leaves no room for an answer" in no_room.pop()

"""rung.decoding: the framework-free half of generation that every local backend shares."""

from __future__ import annotations

import pytest

from rung.decoding import Defaults, RowDecoder, Sampling, request_to_prompt
from rung.errors import RungError
from rung.records import GenerationRequest, Message


class Bytes:
    """A byte-level tokenizer: one id per UTF-8 byte, 256 is end of text, 257 a pad token.

    With `template`, chats render as `<role>content</s>` and 258 (`</s>` written out) ends a turn."""

    vocab_size, eos_id, bos_id, pad_id = 259, 256, None, 257

    def __init__(self, template: bool = True) -> None:
        self.chat_template = "<role>content</s>" if template else None
        self.special_tokens = {"<eos>": 256, "<pad>": 257}
        self.end_of_turn_id = None

    def encode(self, text):
        return [258] if text == "</s>" else list(text.encode())

    def decode(self, ids):
        return bytes(i for i in ids if i < 256).decode(errors="replace")

    def apply_chat_template(self, messages, add_generation_prompt=True):
        text = "".join(f"<{m.role}>{m.content}</s>" for m in messages)
        return text + ("<assistant>" if add_generation_prompt else "")


def feed(decoder, text):
    return [decoder.push(i) for i in text.encode()]


def test_deltas_never_split_a_utf8_character():
    decoder = RowDecoder(Bytes(), Sampling(max_tokens=100), 0, incremental=True)
    deltas = feed(decoder, "aé€")
    assert deltas == ["a", "", "é", "", "", "€"]
    assert decoder.finish("stop") == "" and decoder.text == "aé€"


def test_stop_string_is_trimmed_and_never_shown_in_part():
    decoder = RowDecoder(Bytes(), Sampling(max_tokens=100, stop=("END",)), 0, incremental=False)
    shown = "".join(feed(decoder, "abcEN"))
    assert shown == "abc"  # "EN" could start the stop string: held back
    shown += decoder.push(ord("D"))
    assert decoder.finish_reason == "stop" and decoder.text == "abc" and shown == "abc"


def test_max_tokens_and_stop_ids_finish_the_row():
    decoder = RowDecoder(Bytes(), Sampling(max_tokens=3), 0, incremental=False)
    out = "".join(feed(decoder, "abcd"[:3]))
    assert (decoder.finish_reason, out, decoder.generated) == ("length", "abc", 3)
    decoder = RowDecoder(Bytes(), Sampling(max_tokens=9, stop_ids=frozenset({256})), 0, incremental=False)
    feed(decoder, "ab")
    assert decoder.push(256) == "ab" and decoder.finish_reason == "stop" and decoder.generated == 3


@pytest.mark.parametrize("incremental", [True, False])
def test_special_tokens_are_counted_but_never_shown(incremental):
    decoder = RowDecoder(Bytes(), Sampling(max_tokens=9), 0, incremental=incremental)
    shown = "".join([decoder.push(ord("a")), decoder.push(257), decoder.push(ord("b"))]) + decoder.finish("length")
    assert shown == decoder.text == "ab" and decoder.ids == [ord("a"), 257, ord("b")] and decoder.generated == 3


def test_chat_requests_go_through_the_template_and_stop_at_its_end_of_turn():
    request = GenerationRequest(messages=[Message("user", "hi")], stop=["\n", ""])
    ids, sampling = request_to_prompt(request, Bytes(), Defaults(max_tokens=16, temperature=0.7))
    assert bytes(ids).decode() == "<user>hi</s><assistant>"
    # "</s>" after an assistant turn is one token (258): a stop id, as eos is.
    assert (sampling.max_tokens, sampling.temperature, sampling.stop) == (16, 0.7, ("\n",))
    assert sampling.stop_ids == {256, 258}
    ids, sampling = request_to_prompt(GenerationRequest(prompt="x", max_tokens=2, temperature=0), Bytes(),
                                      Defaults(max_tokens=16, temperature=0.7))
    assert ids == [ord("x")] and sampling.greedy and sampling.max_tokens == 2 and sampling.stop_ids == {256}


@pytest.mark.parametrize("why", ["no template", "raw"])
def test_without_a_template_or_with_raw_messages_are_continued_as_plain_text(why):
    tokenizer = Bytes(template=why != "no template")
    chat = [Message("user", "def fibonacci(n):")]
    raw = why == "raw"
    one, sampling = request_to_prompt(GenerationRequest(messages=chat, raw=raw), tokenizer, Defaults())
    assert bytes(one).decode() == "def fibonacci(n):"  # one message: exactly its text
    assert one == request_to_prompt(GenerationRequest(prompt="def fibonacci(n):"), tokenizer, Defaults())[0]
    assert sampling.stop_ids == {256} and sampling.stop == ()  # no end-of-turn marker: no chat here
    many, _ = request_to_prompt(GenerationRequest(messages=[*chat, Message("assistant", "    if n")], system="Python.",
                                                  raw=raw), tokenizer, Defaults())
    assert bytes(many).decode() == "Python.\ndef fibonacci(n):\n    if n"  # system first, one newline between


def test_a_multi_token_end_of_turn_marker_becomes_a_stop_string():
    class ChatML(Bytes):
        def apply_chat_template(self, messages, add_generation_prompt=True):
            text = "".join(f"<|im_start|>{m.role}\n{m.content}<|im_end|>\n" for m in messages)
            return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")

    _, sampling = request_to_prompt(GenerationRequest(messages=[Message("user", "hi")]), ChatML(), Defaults())
    assert sampling.stop == ("<|im_end|>",) and sampling.stop_ids == {256}


@pytest.mark.parametrize("bad, message", [
    (dict(max_tokens=0), "max_tokens must be at least 1, got 0"),
    (dict(max_tokens=-3), "max_tokens must be at least 1, got -3"),
    (dict(top_k=-1), r"top_k must be at least 1 \(or 0: no top-k\), got -1"),
    (dict(top_p=1.5), r"top_p must be in \(0, 1\], got 1.5"),
    (dict(temperature=-0.5), r"temperature must be 0 \(greedy\) or more, got -0.5"),
])
def test_bad_sampling_settings_are_one_line_errors(bad, message):
    with pytest.raises(RungError, match=f"^{message}$"):
        request_to_prompt(GenerationRequest(prompt="x", **bad), Bytes(), Defaults())


def test_top_k_0_and_top_p_1_mean_off():
    request = GenerationRequest(prompt="x", top_k=0, top_p=1.0, temperature=1)
    _, sampling = request_to_prompt(request, Bytes(), Defaults())
    assert (sampling.top_k, sampling.top_p, sampling.greedy) == (None, None, False)


def test_the_context_check_boundary():
    four = GenerationRequest(prompt="abcd", max_tokens=4)  # 4 prompt tokens + 4 new
    assert request_to_prompt(four, Bytes(), Defaults(), context=8)[1].max_tokens == 4  # exactly fits
    with pytest.raises(RungError) as caught:
        request_to_prompt(four, Bytes(), Defaults(), context=7)  # one token more than fits
    assert str(caught.value) == ("the prompt (4 tokens) plus max_tokens (4) is 8 tokens, more than the model's "
                                 "context of 7; shorten the prompt or lower max_tokens")
    # The backend's default is lowered to what fits; a prompt that leaves no room fails.
    unset = GenerationRequest(prompt="abcd")
    assert request_to_prompt(unset, Bytes(), Defaults(max_tokens=256), context=7)[1].max_tokens == 3
    assert request_to_prompt(unset, Bytes(), Defaults(max_tokens=256), context=5)[1].max_tokens == 1
    with pytest.raises(RungError, match="^the prompt is 4 tokens, which leaves no room for an answer in the "
                                        "model's context of 4 tokens; shorten the prompt$"):
        request_to_prompt(unset, Bytes(), Defaults(max_tokens=256), context=4)


def test_an_empty_prompt_starts_from_a_document_boundary():
    ids, _ = request_to_prompt(GenerationRequest(prompt=""), Bytes(), Defaults())
    assert ids == [256]  # no bos: eos, the separator between documents

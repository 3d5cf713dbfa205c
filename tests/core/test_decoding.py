"""rung.decoding: the framework-free half of generation that torch and jax backends share."""

from __future__ import annotations

import pytest

from rung.decoding import RowDecoder, Sampling, request_to_prompt
from rung.errors import RungError
from rung.records import GenerationRequest, Message


class Bytes:
    """A byte-level tokenizer: one id per UTF-8 byte, 256 is end of text."""

    vocab_size, eos_id, bos_id, pad_id = 257, 256, None, None
    special_tokens = {"<eos>": 256}
    end_of_turn_id = None

    def encode(self, text):
        return list(text.encode())

    def decode(self, ids):
        return bytes(i for i in ids if i < 256).decode(errors="replace")

    def apply_chat_template(self, messages, add_generation_prompt=True):
        return "".join(f"<{m.role}>{m.content}" for m in messages) + ("<assistant>" if add_generation_prompt else "")


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


def test_request_to_prompt_applies_chat_template_and_defaults():
    ids, sampling = request_to_prompt(GenerationRequest(messages=[Message("user", "hi")], stop=["\n", ""]), Bytes(), 16, 0.7)
    assert bytes(ids).decode() == "<user>hi<assistant>"
    assert (sampling.max_tokens, sampling.temperature, sampling.stop, sampling.stop_ids) == (16, 0.7, ("\n",), {256})
    ids, sampling = request_to_prompt(GenerationRequest(prompt="x", max_tokens=2, temperature=0), Bytes(), 16, 0.7)
    assert ids == [ord("x")] and sampling.greedy and sampling.max_tokens == 2


@pytest.mark.parametrize("bad, message", [
    (dict(max_tokens=0), "max_tokens must be at least 1"),
    (dict(top_k=0), "top_k must be at least 1"),
    (dict(top_p=1.5), r"top_p must be in \(0, 1\]"),
])
def test_request_to_prompt_rejects_bad_sampling(bad, message):
    with pytest.raises(RungError, match=message):
        request_to_prompt(GenerationRequest(prompt="x", **bad), Bytes(), 16, None)


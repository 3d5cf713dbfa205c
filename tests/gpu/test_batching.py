"""Continuous batching as `rung serve` runs it (`backend.decode_slots`), on the device: each
greedy request decodes beside 7 others exactly as it does alone."""

from __future__ import annotations

import pytest

from rung.records import GenerationRequest

from tests.gpu.helpers import RecordingRun, StrideTokens, next_token_loss, training_options

pytestmark = pytest.mark.cuda

SLOTS = 8
PROMPTS = ["Hi", "A much longer prompt than the first one, with more words", "Middle sized", "x",
           "Four five six", "seven", "The eighth prompt is of a middling length", "ab"]
# The letter model's prompts: the start of each of its training patterns (a letter, then a stride).
LETTER_PROMPTS = ["adg", "bcdef", "acegik", "mnop", "behk", "xyza", "aceg", "lmnopq"]


def decode(slots, requests: list[GenerationRequest], joins: dict[int, list[int]]) -> list[tuple[str, str, int]]:
    """Drive `slots` step by step; the requests numbered in `joins[k]` join before step k.
    Returns each request's (text: its deltas joined, finish reason, tokens), in request order."""
    texts: dict[int, list[str]] = {}
    ends: dict[int, tuple[str, int]] = {}
    owner: dict[int, int] = {}
    step, waiting = 0, {k: list(v) for k, v in joins.items()}
    while any(waiting.values()) or slots.active:
        for number in waiting.pop(step, []):
            owner[slots.add(requests[number])] = number
            texts[number] = []
        for slot, delta in slots.step():
            texts[owner[slot]].append(delta.text)
            if delta.finish_reason is not None:
                ends[owner.pop(slot)] = (delta.finish_reason, delta.usage.completion_tokens)
        step += 1
    return [("".join(texts[i]), *ends[i]) for i in range(len(requests))]


def beside_seven_others_as_alone(backend, prompts: list[str], new: int) -> None:
    requests = [GenerationRequest(prompt=p, max_tokens=new, temperature=0.0) for p in prompts]
    slots = backend.decode_slots(SLOTS)
    alone = [decode(slots, [request], {0: [0]})[0] for request in requests]
    assert len(set(alone)) > 1, alone  # the prompts lead to different text: rows cannot hide each other
    # Four join at once, the others one by one while those decode: rows of eight lengths share steps.
    together = decode(slots, requests, {0: [0, 1, 2, 3], 2: [4], 3: [5], 5: [6], 8: [7]})
    for prompt, mine, theirs in zip(prompts, together, alone):
        assert mine == theirs, f"{prompt!r}: beside others {mine!r}, alone {theirs!r}"
    assert (slots.free, slots.active) == (SLOTS, 0)


def test_a_request_beside_seven_others_decodes_as_alone_in_fp32(device, exact_fp32, byte_tokenizer):
    import rung

    # A fresh model with init_std 0.3: its greedy text turns on small differences in the logits,
    # so a row that saw another row's keys, or the wrong positions, would change it.
    backend = rung.backend("torch", model="test", tokenizer=byte_tokenizer, device=str(device), precision="fp32",
                           architecture={"init_std": 0.3})
    assert backend.decode_precision == "fp32" and backend.device.type == device.type
    beside_seven_others_as_alone(backend, PROMPTS, new=24)
    alone = backend.generate(GenerationRequest(prompt=PROMPTS[1], max_tokens=24))
    slots = backend.decode_slots(SLOTS)
    one = decode(slots, [GenerationRequest(prompt=PROMPTS[1], max_tokens=24)], {0: [0]})
    assert one == [(alone.text, alone.finish_reason, alone.usage.completion_tokens)]  # generate's own


def test_a_request_beside_seven_others_decodes_as_alone_in_bf16(device, byte_tokenizer, tmp_path):
    """bf16, the decoding precision `rung serve` uses on a GPU. A batch of 8 and a batch of 1 run
    different matmul kernels, which round bf16 differently; a model trained until its next token
    is clear (letter patterns) makes equal text the test of the batching, not of that rounding."""
    import rung

    backend = rung.backend("torch", model="test", tokenizer=byte_tokenizer, device=str(device), precision="bf16")
    assert backend.decode_precision == "bf16"
    from rung_torch.engine import TorchEngine

    # Trained in fp32 (bf16 autocast is slow on a CPU without native bf16), decoded in bf16.
    run = RecordingRun(tmp_path)
    TorchEngine(backend.model, backend.options, device=backend.device, precision="fp32").fit(
        next_token_loss, StrideTokens(batch=16, seq=24, vocab=26, low=ord("a")),
        training_options(steps=150, learning_rate=3e-2, warmup_steps=5), run)
    # The floor is ~0.19 (each row's first letter and stride cannot be predicted).
    assert run.series("loss")[-1] < 0.4, run.series("loss")[-5:]
    beside_seven_others_as_alone(backend, LETTER_PROMPTS, new=20)

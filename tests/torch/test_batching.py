"""Continuous batching (`backend.decode_slots`): requests joining and leaving a running decode
batch decode exactly as each does alone through `backend.generate`."""

from __future__ import annotations

import pytest
import torch

from rung.errors import RungError
from rung.interfaces import DecodeSlots
from rung.records import GenerationRequest, Message
from tests.slots_driver import run

PROMPTS = ["Hi", "A much longer prompt than the first one, with more words", "Middle sized", "x", "Four five six"]


@pytest.fixture
def backend(make_backend):
    return make_backend()


def test_greedy_requests_joining_at_different_steps_each_decode_as_alone(backend):
    requests = [GenerationRequest(prompt=p, max_tokens=20 + 5 * i) for i, p in enumerate(PROMPTS)]
    alone = [backend.generate(r) for r in requests]
    slots = backend.decode_slots(4)
    assert isinstance(slots, DecodeSlots) and (slots.free, slots.active) == (4, 0)
    active: list[int] = []
    # two at once, then one at each of steps 3, 7 and 11 (the last waits for a free slot: max 4)
    done = run(slots, {0: requests[:2], 3: [requests[2]], 7: [requests[3]], 30: [requests[4]]}, most_active=active)
    assert [done[i] for i in range(len(requests))] == alone
    assert max(active) == 4  # rows of four different lengths shared steps
    assert (slots.free, slots.active) == (4, 0)
    assert len({c.text for c in alone}) == len(alone)


def test_stop_strings_the_end_of_text_and_max_tokens_end_rows_as_alone(backend):
    full = backend.generate(GenerationRequest(prompt="Hello", max_tokens=40))
    stop = full.text[12:15]
    requests = [
        GenerationRequest(prompt="Hello", max_tokens=40, stop=["never there", stop]),
        GenerationRequest(prompt="Count", max_tokens=7),
        GenerationRequest(prompt="Counting", max_tokens=7),  # greedy from here picks the end of text
        GenerationRequest(messages=[Message("user", "Say something")], max_tokens=33),
    ]
    alone = [backend.generate(r) for r in requests]
    assert (alone[0].text, alone[0].finish_reason) == (full.text[:full.text.index(stop)], "stop")
    assert (alone[1].finish_reason, alone[1].usage.completion_tokens) == ("length", 7)
    assert (alone[2].finish_reason, alone[2].usage.completion_tokens) == ("stop", 3)
    done = run(backend.decode_slots(3), {0: requests[:1], 2: requests[1:3], 5: requests[3:]})
    assert [done[i] for i in range(4)] == alone


def test_rows_stop_at_the_context_beside_short_ones(make_backend):
    backend = make_backend(architecture={"max_seq_len": 32}, max_tokens=50)
    requests = [GenerationRequest(prompt="x" * 28), GenerationRequest(prompt="y" * 3),
                GenerationRequest(prompt="z" * 20)]
    alone = [backend.generate(r) for r in requests]
    assert [c.usage.completion_tokens for c in alone] == [4, 29, 12]
    done = run(backend.decode_slots(3), {0: requests[1:2], 1: [requests[0], requests[2]]})
    assert [done[i] for i in range(3)] == [alone[1], alone[0], alone[2]]  # in arrival order


def test_cancel_frees_the_slot_for_a_new_request_and_the_others_go_on(backend):
    requests = [GenerationRequest(prompt=p, max_tokens=30) for p in PROMPTS[:3]]
    late = GenerationRequest(prompt="Late comer", max_tokens=25)
    slots = backend.decode_slots(3)
    # request 0 (row 0) is cancelled at step 5: the last row moves into its place; request 3
    # then takes the freed slot
    done = run(slots, {0: requests, 6: [late]}, cancel_at={5: [0]})
    assert 0 not in done
    assert [done[i] for i in (1, 2, 3)] == [backend.generate(r) for r in requests[1:] + [late]]
    assert (slots.free, slots.active) == (3, 0)
    slots.cancel(12345)  # an unknown or finished slot: nothing


def test_a_full_batch_and_a_refused_request_take_no_slot(make_backend):
    backend = make_backend(architecture={"max_seq_len": 32})
    slots = backend.decode_slots(1)
    with pytest.raises(RungError, match="more than the model's context of 32"):
        slots.add(GenerationRequest(prompt="x" * 40, max_tokens=5))
    assert (slots.free, slots.active) == (1, 0)
    slots.add(GenerationRequest(prompt="a", max_tokens=3))
    with pytest.raises(RungError, match="all 1 decode slots are busy"):
        slots.add(GenerationRequest(prompt="b", max_tokens=3))
    assert not slots.accepts(GenerationRequest(prompt="b", logprobs=2))
    assert not slots.accepts(GenerationRequest(prompt="b", echo=True, max_tokens=1))


def test_seeded_sampling_in_a_batch_repeats_and_equals_alone(backend):
    sample = dict(max_tokens=30, temperature=1.0, top_p=0.9, top_k=50)
    requests = [GenerationRequest(prompt="Once upon a time", seed=1, **sample),
                GenerationRequest(prompt="Greedy beside", max_tokens=30),
                GenerationRequest(prompt="Another seed", seed=7, temperature=0.7, max_tokens=25)]
    alone = [backend.generate(r) for r in requests]
    first = run(backend.decode_slots(3), {0: requests[:2], 4: requests[2:]})
    again = run(backend.decode_slots(3), {0: requests[2:], 2: requests[:2]})
    assert [first[i] for i in range(3)] == alone
    assert [again[i] for i in range(3)] == alone[2:] + alone[:2]


def test_wrapped_layers_decode_through_the_module_path(backend):
    class Shifted(torch.nn.Module):  # stands in for a LoRA layer around the base projection
        def __init__(self, base):
            super().__init__()
            self.base = base

        def forward(self, x):
            return self.base(x) + 0.5

    attn = backend.model.model.layers[0].self_attn
    attn.v_proj = Shifted(attn.v_proj)
    requests = [GenerationRequest(prompt=p, max_tokens=15) for p in PROMPTS[:3]]
    alone = [backend.generate(r) for r in requests]
    done = run(backend.decode_slots(3), {0: requests[:1], 3: requests[1:]})
    assert [done[i] for i in range(3)] == alone

"""Continuous batching on the jax backend (`backend.decode_slots`, rung_jax.slots): requests that
join and leave one running decode batch decode exactly as each does alone through the jax
backend's own `generate`, on rung's `test` preset (fresh weights, a byte tokenizer with rung's
chat template; one backend and max_slots 4 for every test, and requests of the same length
buckets, so few programs compile)."""

from __future__ import annotations

import pytest

from rung.errors import RungError
from rung.interfaces import DecodeSlots
from rung.records import GenerationRequest, Message
from tests.slots_driver import run

pytest.importorskip("jax")

# Prompts under 16 tokens and most requests under 32 in all: `generate` compiles few programs.
PROMPTS = ["the cat", "a dog ran far", "rain", "over hills", "x"]
SCHEMA = {"type": "object", "properties": {"kind": {"enum": ["a", "b", 3]}, "ok": {"type": "boolean"}},
          "required": ["kind", "ok"]}
SLOTS = 4


def greedy(**kw) -> GenerationRequest:
    return GenerationRequest(temperature=0, **kw)


def make_backend(tokenizer=None, **options):
    import rung

    tokenizer = tokenizer or rung.tokenizer("byte", chat_template="rung")
    # init_std 0.3: logits far from uniform, so greedy text is varied and not a string of near ties
    return rung.backend("jax", model="test", tokenizer=tokenizer, architecture={"init_std": 0.3}, **options)


@pytest.fixture(scope="module")
def backend():
    return make_backend()


def test_greedy_requests_joining_and_leaving_mid_way_each_decode_as_alone(backend):
    requests = [greedy(prompt=p, max_tokens=12 + 2 * i) for i, p in enumerate(PROMPTS)]
    requests[2] = greedy(messages=[Message("user", "rain")], max_tokens=16)
    # the second and the last run on together past column 64, where the step widens its window
    requests[1], requests[4] = greedy(prompt=PROMPTS[1], max_tokens=70), greedy(prompt=PROMPTS[4], max_tokens=40)
    alone = [backend.generate(r) for r in requests]
    slots = backend.decode_slots(SLOTS)
    assert isinstance(slots, DecodeSlots) and (slots.free, slots.active) == (SLOTS, 0)
    active: list[int] = []
    # two at once, then one at each of steps 3 and 7, the last after the first ones left (max 4)
    done = run(slots, {0: requests[:2], 3: [requests[2]], 7: [requests[3]], 25: [requests[4]]}, most_active=active)
    assert [done[i] for i in range(len(requests))] == alone
    assert max(active) == 4  # rows of four different lengths shared steps
    assert (slots.free, slots.active) == (SLOTS, 0)
    assert len({c.text for c in alone}) == len(alone)
    # row 1 (the second request's, the last to finish) holds the keys and values of its prompt
    # and of every token fed back, each at its own column: those of one pass over the sequence
    assert alone[1].usage.completion_tokens == 70
    check_row(backend, slots, 1, requests[1])
    # a second batch on the same slots (rows reused, the first batch's programs): the same again
    again = run(slots, {0: requests[3:], 2: requests[:2], 30: requests[2:3]})
    assert [again[i] for i in range(len(requests))] == alone[3:] + alone[:3]


def check_row(backend, slots, row: int, request: GenerationRequest) -> None:
    import jax.numpy as jnp
    import numpy as np

    from rung_jax.generation import generate_ids

    prompt, sampling = backend._prepare(request)
    ids = prompt + generate_ids(backend.model, prompt, sampling)[:-1]  # the last one is never fed
    model = backend.model
    _, whole = model.decode(jnp.asarray([ids]), model.init_cache(1, len(ids)), 0)
    for (keys, values), (k, v) in zip(slots._batch.cache, whole):
        np.testing.assert_allclose(np.asarray(keys[row, :len(ids)]), np.asarray(k[0]), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(np.asarray(values[row, :len(ids)]), np.asarray(v[0]), rtol=1e-4, atol=1e-5)


class _EosTokenizer:
    """A tokenizer whose eos id is `eos` (what a model stops on), the rest the wrapped one's."""

    def __init__(self, inner, eos: int) -> None:
        self._inner, self.eos_id = inner, eos

    def __getattr__(self, name):
        return getattr(self._inner, name)


def test_stop_strings_stop_ids_and_max_tokens_end_rows_as_generate_does(backend):
    # a token greedy decoding of "the cat" first picks after a few others becomes the eos id
    from rung_jax.generation import generate_ids

    tokens = generate_ids(backend.model, *backend._prepare(greedy(prompt="the cat", max_tokens=20)))
    at = next(i for i in range(6, len(tokens)) if tokens[i] not in tokens[:i])
    stopping = make_backend(_EosTokenizer(backend.tokenizer, tokens[at]))
    full = stopping.generate(greedy(prompt="birds sang", max_tokens=20)).text
    cut = next(i for i in range(4, len(full) - 3) if full.find(full[i:i + 3]) == i)
    stop = full[cut:cut + 3]  # first seen mid-way
    requests = [
        greedy(prompt="birds sang", max_tokens=20, stop=["never there", stop]),
        greedy(prompt="the cat", max_tokens=20),  # stops on the eos id
        greedy(prompt="the dog", max_tokens=7),
        greedy(messages=[Message("user", "dog")], max_tokens=18),
    ]
    alone = [stopping.generate(r) for r in requests]
    assert (alone[0].text, alone[0].finish_reason) == (full[:cut], "stop")
    assert (alone[1].finish_reason, alone[1].usage.completion_tokens) == ("stop", at + 1)
    assert (alone[2].finish_reason, alone[2].usage.completion_tokens) == ("length", 7)
    done = run(stopping.decode_slots(SLOTS), {0: requests[:1], 2: requests[1:3], 12: requests[3:]})
    assert [done[i] for i in range(4)] == alone
    assert all(c.usage.prompt_tokens > 0 for c in alone)


def test_seeded_sampling_draws_from_its_own_key(backend):
    sample = dict(max_tokens=20, temperature=1.0, top_p=0.9, top_k=50)
    requests = [GenerationRequest(prompt="the dog", seed=1, **sample),
                greedy(prompt="rain", max_tokens=20, repetition_penalty=1.3),
                GenerationRequest(prompt="a cat", seed=7, temperature=0.7, min_p=0.05, max_tokens=16)]
    alone = [backend.generate(r) for r in requests]
    first = run(backend.decode_slots(SLOTS), {0: requests[:2], 4: requests[2:]})
    again = run(backend.decode_slots(SLOTS), {0: requests[2:], 2: requests[:2]})
    assert [first[i] for i in range(3)] == alone
    assert [again[i] for i in range(3)] == alone[2:] + alone[:2]
    other = run(backend.decode_slots(SLOTS), {0: [GenerationRequest(prompt="the dog", seed=2, **sample)]})
    assert other[0].text != alone[0].text  # the seed matters
    plain = backend.generate(greedy(prompt="rain", max_tokens=20))
    assert plain.text != alone[1].text  # the penalty matters


def test_structured_output_and_token_healing_decode_as_generate_does(backend):
    import json

    requests = [greedy(prompt="JSON:", max_tokens=24, constraint=SCHEMA),
                GenerationRequest(prompt="JSON:", max_tokens=24, temperature=1.0, seed=3, constraint=SCHEMA),
                greedy(prompt="the ca", max_tokens=15, token_healing=True),
                greedy(prompt="rain", max_tokens=20)]
    alone = [backend.generate(r) for r in requests]
    done = run(backend.decode_slots(SLOTS), {0: requests[2:], 3: requests[:2]})
    assert [done[i] for i in range(4)] == alone[2:] + alone[:2]
    for completion in alone[:2]:
        assert set(json.loads(completion.text)) == {"kind", "ok"}
    assert alone[2].usage.prompt_tokens == len("the ca") - 1  # healed: its last byte backed up
    assert alone[2].text != backend.generate(greedy(prompt="the ca", max_tokens=15)).text


def test_cancel_frees_the_slot_at_once_and_the_others_go_on(backend):
    requests = [greedy(prompt=p, max_tokens=18) for p in PROMPTS[:3]]
    alone = [backend.generate(r) for r in requests]
    slots = backend.decode_slots(SLOTS)
    done = run(slots, {0: requests[:2], 3: requests[2:]}, cancel_at={5: [0]})
    assert 0 not in done and [done[1], done[2]] == alone[1:]
    slots = backend.decode_slots(3)  # not a power of two: a step of 3 rows, not 4
    first = slots.add(requests[0])
    slots.step()
    others = [slots.add(r) for r in requests[1:]]
    assert slots.free == 0
    slots.cancel(first)
    assert (slots.free, slots.active) == (1, 2)
    slots.cancel(first)  # already gone: nothing
    last = slots.add(requests[0])  # the freed row, prefilled over the cancelled request's
    assert last == first and slots.free == 0
    texts: dict[int, list[str]] = {slot: [] for slot in others + [last]}
    while slots.active:
        for slot, delta in slots.step():
            texts[slot].append(delta.text)
    assert ["".join(texts[slot]) for slot in others + [last]] == [c.text for c in alone[1:] + alone[:1]]


def test_refusals_and_context_errors_take_no_slot(backend):
    slots = backend.decode_slots(SLOTS)
    for request in (greedy(prompt="x", max_tokens=4, logprobs=2), greedy(prompt="x", max_tokens=4, echo=True)):
        assert not slots.accepts(request)
        with pytest.raises(RungError, match="use backend.generate"):
            slots.add(request)
    assert slots.accepts(greedy(prompt="x", max_tokens=4, constraint=SCHEMA))
    context = backend.model.arch.max_seq_len
    too_long = greedy(prompt="x" * (context + 1), max_tokens=1)
    with pytest.raises(RungError) as alone:
        backend.generate(too_long)
    with pytest.raises(RungError) as batched:
        slots.add(too_long)
    assert str(batched.value) == str(alone.value) and "\n" not in str(alone.value)
    assert str(alone.value).startswith(f"the prompt ({context + 1} tokens) plus max_tokens (1)")
    with pytest.raises(RungError, match="top_p must be in"):
        slots.add(greedy(prompt="x", top_p=1.5))
    assert (slots.free, slots.active) == (SLOTS, 0)
    for prompt in "wxyz":
        slots.add(greedy(prompt=prompt, max_tokens=2))
    with pytest.raises(RungError, match=f"all {SLOTS} decode slots are busy"):
        slots.add(greedy(prompt="z", max_tokens=2))
    with pytest.raises(ValueError, match="max_slots"):
        backend.decode_slots(0)
    assert make_backend(continuous_batching=False).decode_slots is None


def test_a_batch_after_the_weights_changed_decodes_with_the_new_ones():
    import jax
    from flax import nnx

    changed = make_backend()
    slots = changed.decode_slots(SLOTS)
    request = greedy(prompt="the cat", max_tokens=12)
    before = changed.generate(request)
    assert run(slots, {0: [request]})[0] == before
    assert run(slots, {0: [request]})[0] == before  # the same batch again: its cache kept
    _, state = nnx.split(changed.model)
    nnx.update(changed.model, jax.tree.map(lambda x: x * 1.5, state))  # what a training step does
    after = changed.generate(request)
    assert after.text != before.text
    assert run(slots, {0: [request]})[0] == after

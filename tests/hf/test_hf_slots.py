"""Continuous batching on the hf backend (`backend.decode_slots`, rung_hf.slots): requests that
join and leave one running decode batch decode exactly as each does alone through the hf
backend's own `generate` (transformers' `model.generate`), on tiny Llama, GPT-2 and Qwen2
checkpoints saved to disk and loaded back."""

from __future__ import annotations

import json
import shutil

import pytest

import rung
from rung.errors import RungError
from rung.interfaces import DecodeSlots
from rung.records import GenerationRequest, Message

from hf_models import FAMILIES
from tests.slots_driver import run

PROMPTS = ["the cat", "a dog ran to the park while birds sang", "rain", "over hills rivers and stones", "x"]
SCHEMA = {"type": "object", "properties": {"kind": {"enum": ["a", "b", 3]}, "ok": {"type": "boolean"},
                                           "n": {"type": "integer"}}, "required": ["kind", "ok", "n"]}


def greedy(**kw) -> GenerationRequest:
    return GenerationRequest(temperature=0, **kw)


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_requests_joining_and_leaving_mid_way_each_decode_as_alone(backend_of, family):
    backend = backend_of(family)
    requests = [greedy(prompt=p, max_tokens=20 + 5 * i) for i, p in enumerate(PROMPTS)]
    requests[2] = greedy(messages=[Message("user", "rain over hills")], max_tokens=30)
    alone = [backend.generate(r) for r in requests]
    slots = backend.decode_slots(4)
    assert isinstance(slots, DecodeSlots) and (slots.free, slots.active) == (4, 0)
    active: list[int] = []
    # two at once, then one at each of steps 3 and 7, the last after the first ones left (max 4)
    done = run(slots, {0: requests[:2], 3: [requests[2]], 7: [requests[3]], 40: [requests[4]]}, most_active=active)
    assert [done[i] for i in range(len(requests))] == alone
    assert max(active) == 4  # rows of four different lengths shared steps
    assert (slots.free, slots.active) == (4, 0)
    assert len({c.text for c in alone}) == len(alone)


@pytest.fixture(scope="module")
def stopping_backend(model_dirs, tmp_path_factory):
    """The tiny Llama with one more eos id in its generation_config.json: a token greedy
    decoding of "the cat" first picks after a few others, so a request stops on an id mid-way.
    Returns (backend, the tokens the request generates then)."""
    base = rung.backend("hf", model=str(model_dirs["llama"]))
    ids = base.hf_tokenizer.encode("the cat")
    import torch

    with torch.no_grad():
        out = base.model.generate(torch.tensor([ids]), max_new_tokens=20, do_sample=False)[0, len(ids):].tolist()
    at = next(i for i in range(6, len(out)) if out[i] not in out[:i])
    token = out[at]
    folder = tmp_path_factory.mktemp("stopping") / "llama"
    shutil.copytree(model_dirs["llama"], folder)
    config = json.loads((folder / "generation_config.json").read_text())
    config["eos_token_id"] = [config["eos_token_id"], token]
    (folder / "generation_config.json").write_text(json.dumps(config))
    return rung.backend("hf", model=str(folder), max_tokens=40), at + 1


def test_stop_strings_stop_ids_and_max_tokens_end_rows_as_generate_does(stopping_backend):
    backend, stops_after = stopping_backend
    full = backend.generate(greedy(prompt="birds sang songs of rain", max_tokens=40)).text
    at = next(i for i in range(8, len(full) - 3) if full.find(full[i:i + 3]) == i)
    stop = full[at:at + 3]  # first seen mid-way
    requests = [
        greedy(prompt="birds sang songs of rain", max_tokens=40, stop=["never there", stop]),
        greedy(prompt="the cat", max_tokens=30),  # stops on the eos id added
        greedy(prompt="the dog", max_tokens=7),
        greedy(messages=[Message("user", "the dog")], max_tokens=33),
    ]
    alone = [backend.generate(r) for r in requests]
    assert (alone[0].text, alone[0].finish_reason) == (full[:at], "stop")
    assert (alone[1].finish_reason, alone[1].usage.completion_tokens) == ("stop", stops_after)
    assert (alone[2].finish_reason, alone[2].usage.completion_tokens) == ("length", 7)
    done = run(backend.decode_slots(3), {0: requests[:1], 2: requests[1:3], 12: requests[3:]})
    assert [done[i] for i in range(4)] == alone
    assert all(c.usage.prompt_tokens > 0 for c in alone)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_seeded_sampling_draws_from_its_own_generator(backend_of, family):
    backend = backend_of(family)
    sample = dict(max_tokens=25, temperature=1.0, top_p=0.9, top_k=50)
    requests = [GenerationRequest(prompt="the dog", seed=1, **sample),
                greedy(prompt="rain", max_tokens=25, repetition_penalty=1.3),
                GenerationRequest(prompt="a cat", seed=7, temperature=0.7, min_p=0.05, max_tokens=20)]
    alone = [backend.generate(r) for r in requests]
    first = run(backend.decode_slots(3), {0: requests[:2], 4: requests[2:]})
    again = run(backend.decode_slots(3), {0: requests[2:], 2: requests[:2]})
    assert [first[i] for i in range(3)] == alone
    assert [again[i] for i in range(3)] == alone[2:] + alone[:2]
    other = run(backend.decode_slots(2), {0: [GenerationRequest(prompt="the dog", seed=2, **sample)]})
    assert other[0].text != alone[0].text  # the seed matters


def test_structured_output_and_token_healing_decode_as_generate_does(backend_of):
    backend = backend_of("llama")
    requests = [greedy(prompt="JSON:", max_tokens=60, constraint=SCHEMA),
                GenerationRequest(prompt="JSON:", max_tokens=60, temperature=1.0, seed=3, constraint=SCHEMA),
                greedy(prompt="the ca", max_tokens=15, token_healing=True),
                greedy(prompt="rain", max_tokens=25)]
    alone = [backend.generate(r) for r in requests]
    done = run(backend.decode_slots(4), {0: requests[2:], 3: requests[:2]})
    assert [done[i] for i in range(4)] == alone[2:] + alone[:2]
    for completion in alone[:2]:
        assert set(json.loads(completion.text)) == {"kind", "ok", "n"}


def test_cancel_frees_the_slot_at_once_and_the_others_go_on(backend_of):
    backend = backend_of("llama")
    requests = [greedy(prompt=p, max_tokens=30) for p in PROMPTS[:3]]
    late = greedy(prompt="the park", max_tokens=25)
    slots = backend.decode_slots(3)
    first = slots.add(requests[0])
    slots.add(requests[1])
    slots.cancel(first)  # before its prefill
    assert (slots.free, slots.active) == (2, 1)
    slots.step()
    slots.cancel(slots.add(requests[2]))
    assert (slots.free, slots.active) == (2, 1)
    slots.cancel(1)  # a running row: gone before the next step
    assert (slots.free, slots.active) == (3, 0) and slots.step() == []
    # request 0 (the first row) is cancelled at step 5: the others' rows close up; the late
    # request then takes the freed slot
    done = run(slots, {0: requests, 6: [late]}, cancel_at={5: [0]})
    assert 0 not in done
    assert [done[i] for i in (1, 2, 3)] == [backend.generate(r) for r in requests[1:] + [late]]
    assert (slots.free, slots.active) == (3, 0)
    slots.cancel(12345)  # an unknown or finished slot: nothing


def test_a_prompt_over_the_context_a_full_batch_and_refused_requests_take_no_slot(backend_of):
    backend = backend_of("llama")
    slots = backend.decode_slots(1)
    with pytest.raises(RungError, match="more than the model's context of 256") as error:
        slots.add(GenerationRequest(prompt="the cat sat " * 120, max_tokens=5))
    assert "\n" not in str(error.value)
    with pytest.raises(RungError, match="leaves no room for an answer"):
        slots.add(GenerationRequest(prompt="the cat sat " * 120))
    assert (slots.free, slots.active) == (1, 0)
    for refused in (GenerationRequest(prompt="b", logprobs=2), GenerationRequest(prompt="b", echo=True, max_tokens=1)):
        assert not slots.accepts(refused)
        with pytest.raises(RungError, match="not decoded in a batch slot"):
            slots.add(refused)
    slots.add(GenerationRequest(prompt="a", max_tokens=3))
    with pytest.raises(RungError, match="all 1 decode slots are busy"):
        slots.add(GenerationRequest(prompt="b", max_tokens=3))


def test_models_the_slots_cannot_decode_as_generate_are_left_to_generate(model_dirs, tmp_path):
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    from rung_hf.slots import batchable

    folder = tmp_path / "llama"
    shutil.copytree(model_dirs["llama"], folder)
    config = json.loads((folder / "generation_config.json").read_text())
    (folder / "generation_config.json").write_text(json.dumps({**config, "no_repeat_ngram_size": 3}))
    ngrams = rung.backend("hf", model=str(folder))
    slots = ngrams.decode_slots(2)  # a processor the slots do not apply: every request to generate
    assert not slots.accepts(greedy(prompt="the cat"))
    with pytest.raises(RungError, match="sets no_repeat_ngram_size, which batch slots do not apply"):
        slots.add(greedy(prompt="the cat"))
    assert rung.backend("hf", model=str(model_dirs["llama"]), continuous_batching=False).decode_slots is None
    torch.manual_seed(0)
    sliding = MistralForCausalLM(MistralConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                               sliding_window=16))
    assert "sliding-window" in batchable(sliding)
    assert batchable(ngrams.model) is None

"""Generation with the static KV cache: exact against transformers, batching, sampling, stops, streaming."""

from __future__ import annotations

import pytest
import torch

from rung.errors import RungError
from rung.records import GenerationRequest, Message
from rung_torch.generate import RowDecoder, Sampling, generate_tokens


def greedy_ids(backend, prompt_ids, n):
    """Token ids rung's generation picks after `prompt_ids` (no stop id)."""
    rows = [Sampling(max_tokens=n)]
    decoders = [RowDecoder(_IdsTokenizer(), rows[0], len(prompt_ids), incremental=False)]
    list(generate_tokens(backend.model, [prompt_ids], rows, decoders, backend.device))
    return decoders[0].ids


class _IdsTokenizer:
    def decode(self, ids):
        return ",".join(map(str, ids))


def test_greedy_decoding_matches_transformers_generate_token_for_token(make_backend, tmp_path):
    from transformers import LlamaForCausalLM

    backend = make_backend(architecture={"tie_embeddings": False})
    with torch.no_grad():  # norm weights away from their initial ones (decoding folds them)
        for name, p in backend.model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(len(name)))
    backend.save(tmp_path)
    hf = LlamaForCausalLM.from_pretrained(tmp_path).eval()
    prompt = backend.tokenizer.encode("The cache must not change the answer.")
    with torch.inference_mode():
        out = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                          max_new_tokens=40, min_new_tokens=40, do_sample=False, pad_token_id=0)
    assert greedy_ids(backend, prompt, 40) == out[0, len(prompt):].tolist()


def test_a_batch_of_different_lengths_decodes_as_each_prompt_alone(make_backend):
    backend = make_backend()
    requests = [
        GenerationRequest(prompt="Hi", max_tokens=25),
        GenerationRequest(prompt="A much longer prompt than the first one", max_tokens=12),
        GenerationRequest(prompt="Middle sized", max_tokens=18, temperature=0.9, seed=5),
    ]
    batched = backend.generate_batch(requests)
    alone = [backend.generate(r) for r in requests]
    assert batched == alone
    assert [c.usage.completion_tokens for c in batched] == [25, 12, 18]
    assert len({c.text for c in batched}) == 3


def test_seeded_sampling_is_reproducible_and_top_k_1_is_greedy(make_backend):
    backend = make_backend()
    sample = dict(prompt="Once upon a time", max_tokens=30, temperature=1.0, top_p=0.9, top_k=50)
    first = backend.generate(GenerationRequest(**sample, seed=1))
    assert backend.generate(GenerationRequest(**sample, seed=1)) == first
    assert backend.generate(GenerationRequest(**sample, seed=2)).text != first.text
    greedy = backend.generate(GenerationRequest(prompt="Once upon a time", max_tokens=30))
    top1 = backend.generate(GenerationRequest(prompt="Once upon a time", max_tokens=30, temperature=1.5, top_k=1))
    assert top1.text == greedy.text != first.text


def test_stop_strings_trim_the_text_and_streams_never_show_them(make_backend):
    backend = make_backend()
    full = backend.generate(GenerationRequest(prompt="Hello", max_tokens=40))
    assert full.finish_reason == "length" and full.usage.completion_tokens == 40
    stop = full.text[15:18]
    expected = full.text[:full.text.index(stop)]
    request = GenerationRequest(prompt="Hello", max_tokens=40, stop=["never there", stop])
    done = backend.generate(request)
    assert (done.text, done.finish_reason) == (expected, "stop")
    assert done.usage.completion_tokens < 40
    deltas = list(backend.stream(request))
    assert "".join(d.text for d in deltas) == expected
    assert all(d.finish_reason is None and d.usage is None for d in deltas[:-1])
    assert deltas[-1].finish_reason == "stop" and deltas[-1].usage == done.usage


def test_streamed_deltas_concatenate_to_the_generated_text(make_backend):
    backend = make_backend(architecture={"tie_embeddings": False})
    request = GenerationRequest(messages=[Message("user", "Tell me something")], max_tokens=30,
                                temperature=0.8, seed=7)
    done = backend.generate(request)
    deltas = list(backend.stream(request))
    assert "".join(d.text for d in deltas) == done.text
    assert len(deltas) > 3
    assert deltas[-1].usage == done.usage and deltas[-1].finish_reason == done.finish_reason
    # The byte tokenizer has no chat template: the message is continued as its plain text.
    assert done.usage.prompt_tokens == len(backend.tokenizer.encode("Tell me something"))


def test_streaming_never_splits_a_utf8_character(byte_tokenizer):
    text = "né € 😀!"
    ids = byte_tokenizer.encode(text)
    assert len(ids) > len(text)  # several byte tokens per character
    decoder = RowDecoder(byte_tokenizer, Sampling(max_tokens=100), 1, incremental=True)
    deltas = [decoder.push(i) for i in ids] + [decoder.finish("stop")]
    assert "".join(deltas) == text
    assert not any("\ufffd" in d for d in deltas)


def test_the_end_of_sequence_token_finishes_with_stop(make_backend):
    backend = make_backend()
    prompt = backend.tokenizer.encode("Hello")
    ids = greedy_ids(backend, prompt, 10)
    eos = ids[4]
    rows = [Sampling(max_tokens=10, stop_ids=frozenset({eos}))]
    decoder = RowDecoder(backend.tokenizer, rows[0], len(prompt), incremental=False)
    events = list(generate_tokens(backend.model, [prompt], rows, [decoder], backend.device))
    assert decoder.finish_reason == "stop" and decoder.ids == ids[:ids.index(eos)]
    assert decoder.generated == ids.index(eos) + 1  # the stopping token was generated too
    assert events[-1].finish_reason == "stop"


def test_a_request_that_does_not_fit_the_context_is_a_clear_error(make_backend):
    backend = make_backend(architecture={"max_seq_len": 32})
    with pytest.raises(RungError, match=r"^the prompt \(40 tokens\) plus max_tokens \(5\) is 45 tokens, more than "
                                        r"the model's context of 32; shorten the prompt or lower max_tokens$"):
        backend.generate(GenerationRequest(prompt="x" * 40, max_tokens=5))
    exactly = backend.generate(GenerationRequest(prompt="x" * 28, max_tokens=4))  # 28 + 4 = 32: fits
    assert exactly.usage.completion_tokens <= 4
    with pytest.raises(RungError, match=r"plus max_tokens \(5\) is 33 tokens"):
        backend.generate(GenerationRequest(prompt="x" * 28, max_tokens=5))
    # Left unset, max_tokens (the backend's default, 256) is lowered to the room left: "length" there.
    done = backend.generate(GenerationRequest(prompt="x" * 28))
    assert (done.finish_reason, done.usage.completion_tokens) == ("length", 4)
    with pytest.raises(RungError, match="^the prompt is 32 tokens, which leaves no room for an answer"):
        backend.generate(GenerationRequest(prompt="x" * 32))


def test_generation_sees_weights_changed_in_place(make_backend):
    backend = make_backend()
    request = GenerationRequest(prompt="Hello", max_tokens=20)
    before = backend.generate(request)
    with torch.no_grad():
        for p in backend.model.parameters():
            p.mul_(-1.5)  # what an optimizer step does: in place
    after = backend.generate(request)
    assert after.text != before.text
    prompt = backend.tokenizer.encode("Hello")
    with torch.no_grad():  # the module's own forward agrees with the fast decoding path
        expected = backend.model(torch.tensor([prompt]))[0, -1].argmax().item()
    assert greedy_ids(backend, prompt, 1) == [expected]


def test_rows_of_a_batch_each_stop_at_the_context(make_backend):
    backend = make_backend(architecture={"max_seq_len": 32}, max_tokens=50)
    requests = [GenerationRequest(prompt="x" * 28), GenerationRequest(prompt="y" * 20)]
    batched = backend.generate_batch(requests)
    assert [c.usage.completion_tokens for c in batched] == [4, 12]
    assert batched == [backend.generate(r) for r in requests]


def test_wrapped_layers_such_as_adapters_are_used_when_generating(make_backend):
    backend = make_backend()
    request = GenerationRequest(prompt="Hello", max_tokens=12)
    plain = backend.generate(request)

    class Shifted(torch.nn.Module):  # stands in for a LoRA layer around the base projection
        def __init__(self, base):
            super().__init__()
            self.base = base

        def forward(self, x):
            return self.base(x) + 0.5

    attn = backend.model.model.layers[0].self_attn
    attn.v_proj = Shifted(attn.v_proj)
    adapted = backend.generate(request)
    assert adapted.text != plain.text
    # Greedy decoding through the cache agrees with the full forward pass of the wrapped model.
    ids = backend.tokenizer.encode("Hello")
    with torch.no_grad():
        for _ in range(12):
            ids.append(backend.model(torch.tensor([ids]))[0, -1].argmax().item())
    special = set(backend.tokenizer.special_tokens.values())  # markup, never part of the text
    assert adapted.text == backend.tokenizer.decode([i for i in ids[-12:] if i not in special])


def test_a_stream_leaves_grad_mode_alone_between_deltas(make_backend):
    backend = make_backend()
    seen = [torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
            for _ in backend.stream(GenerationRequest(prompt="Hello", max_tokens=5))]
    assert seen and all(seen)


def test_generation_inside_a_training_autocast_decodes_in_its_own_precision(make_backend):
    # The engine runs evaluators (which may sample) inside its bf16 training autocast; the
    # answer must be the one generation gives outside it, on the flat path and the module path.
    backend = make_backend()
    request = GenerationRequest(prompt="Precision is the backend's choice", max_tokens=40)
    outside = backend.generate(request)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = backend.generate(request)
    assert inside == outside

    # The module path (layers wrapped, e.g. by LoRA) under the same outer autocast.
    from rung_torch.generate import ModuleForward, forward_for

    backend.model.model.layers[0].mlp.up_proj = _Wrapped(backend.model.model.layers[0].mlp.up_proj)
    assert isinstance(forward_for(backend.model, torch.float32), ModuleForward)
    outside = backend.generate(request)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = backend.generate(request)
    assert inside == outside


class _Wrapped(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)

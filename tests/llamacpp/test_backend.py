"""The `llamacpp` backend on a tiny trained rung-torch model: the same greedy tokens, token ids,
chat prompts and log-probabilities as rung-torch on the same (f32) weights, from the model folder
(exported and cached) and from the GGUF file alone; the export cache; options; one-line errors."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from dataclasses import replace

import pytest

import rung
from rung.errors import ConfigError, RungError
from rung.records import GenerationRequest, Message
from tests.llamacpp.conftest import PROMPTS, train_model


def greedy(prompt: str, **fields) -> GenerationRequest:
    return GenerationRequest(prompt=prompt, **{"max_tokens": 24, "temperature": 0.0, **fields})


def token_ids(backend, request: GenerationRequest) -> list[int]:
    done = backend.generate(replace(request, logprobs=0))
    return [entry.id for entry in done.logprobs]


def test_greedy_tokens_equal_rung_torchs_on_the_same_weights(folder_backend, torch_backend):
    texts = []
    for prompt in PROMPTS:
        ours, theirs = folder_backend.generate(greedy(prompt)), torch_backend.generate(greedy(prompt))
        assert (ours.text, ours.finish_reason, ours.usage) == (theirs.text, theirs.finish_reason, theirs.usage)
        assert token_ids(folder_backend, greedy(prompt)) == token_ids(torch_backend, greedy(prompt))
        texts.append(ours.text)
    assert len(set(texts)) >= len(PROMPTS) // 2, f"the model repeats itself; the comparison says little: {texts}"


def test_the_gguf_file_alone_tokenizes_and_answers_as_the_folder(folder_backend, gguf_backend):
    assert type(gguf_backend.tokenizer).__name__ == "LlamaCppTokenizer"
    rung_tokenizer, llama_tokenizer = folder_backend.tokenizer, gguf_backend.tokenizer
    chat = rung_tokenizer.apply_chat_template([Message("system", "be brief"), Message("user", "the cat")])
    for text in [*PROMPTS, chat, "  spaces\tand\nnewlines  ", "<|endoftext|> between <|endoftext|>"]:
        assert llama_tokenizer.encode(text) == rung_tokenizer.encode(text), text
        ids = rung_tokenizer.encode(text)
        assert llama_tokenizer.decode(ids) == rung_tokenizer.decode(ids)
    assert llama_tokenizer.special_tokens == rung_tokenizer.special_tokens
    assert (llama_tokenizer.eos_id, llama_tokenizer.vocab_size) == (rung_tokenizer.eos_id, rung_tokenizer.vocab_size)
    for prompt in PROMPTS:
        assert gguf_backend.generate(greedy(prompt)) == replace(folder_backend.generate(greedy(prompt)),
                                                                model=gguf_backend.name)


def test_a_chat_goes_through_the_models_chat_template(folder_backend, gguf_backend, torch_backend):
    messages = (Message("system", "answer in words"), Message("user", "the king rode to"))
    request = GenerationRequest(messages=messages, max_tokens=16, temperature=0.0)
    rendered = folder_backend.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True)
    assert "<|assistant|>" in rendered  # rung's template, saved with the tokenizer and carried in the GGUF file
    assert gguf_backend.tokenizer.apply_chat_template(list(messages)) == rendered
    answers = [b.generate(request) for b in (folder_backend, gguf_backend, torch_backend)]
    assert len({(a.text, a.finish_reason, a.usage) for a in answers}) == 1, answers
    assert answers[0].usage.prompt_tokens == len(folder_backend.tokenizer.encode(rendered))
    raw = folder_backend.generate(GenerationRequest(messages=messages, max_tokens=16, temperature=0.0, raw=True))
    assert raw.usage.prompt_tokens == len(folder_backend.tokenizer.encode("answer in words\nthe king rode to"))


def test_logprobs_and_echo_scores_equal_rung_torchs(folder_backend, torch_backend):
    for backend_request in (greedy("the cat sat", logprobs=3), greedy("birds", logprobs=3, temperature=1.0, seed=3)):
        ours = folder_backend.generate(backend_request)
        reference = torch_backend.generate(backend_request) if backend_request.temperature == 0 else None
        assert ours.logprobs and len(ours.logprobs) == ours.usage.completion_tokens - (ours.finish_reason == "stop")
        for entry in ours.logprobs:
            assert entry.logprob <= 0 and len(entry.top) == 3 and entry.top[0][1] >= entry.logprob - 1e-9
        if reference is not None:
            for a, b in zip(ours.logprobs, reference.logprobs, strict=True):
                assert (a.id, a.token, [t for t, _ in a.top]) == (b.id, b.token, [t for t, _ in b.top])
                assert math.isclose(a.logprob, b.logprob, abs_tol=1e-4)  # f32 weights, f32 KV cache
    echo = GenerationRequest(prompt="the queen sang a song", max_tokens=0, echo=True, logprobs=1)
    ours, theirs = folder_backend.generate(echo), torch_backend.generate(echo)
    assert ours.text == "" and ours.prompt_logprobs[0].logprob is None
    assert [p.id for p in ours.prompt_logprobs] == [p.id for p in theirs.prompt_logprobs]
    for a, b in zip(ours.prompt_logprobs[1:], theirs.prompt_logprobs[1:], strict=True):
        assert math.isclose(a.logprob, b.logprob, abs_tol=1e-4) and a.top[0][0] == b.top[0][0]
    # llama.cpp's own f16 cache is ~1e-3 off (2e-6 with the f32 cache `auto` gives an f32 file)
    f16_cache = rung.backend("llamacpp", model=str(folder_backend.gguf_path), kv_cache="f16")
    drift = max(abs(a.logprob - b.logprob) for a, b in
                zip(f16_cache.generate(echo).prompt_logprobs[1:], theirs.prompt_logprobs[1:], strict=True))
    f16_cache.close()
    assert 1e-4 < drift < 1e-2


def test_echo_scores_a_prompt_longer_than_one_llamacpp_batch(model_dir, folder_backend):
    small_batches = rung.backend("llamacpp", model=str(model_dir), batch_size=8)
    ids = tuple(folder_backend.tokenizer.encode("the king rode to the castle and the queen sang a song. " * 2))
    request = GenerationRequest(prompt="", prompt_ids=ids, max_tokens=0, echo=True, logprobs=2)
    scored = small_batches.generate(request).prompt_logprobs
    whole = folder_backend.generate(request).prompt_logprobs
    assert len(ids) > 16 and len(scored) == len(ids)
    assert [round(p.logprob, 4) for p in scored[1:]] == [round(p.logprob, 4) for p in whole[1:]]
    small_batches.close()


def test_structured_output_always_parses(folder_backend):
    from pydantic import BaseModel

    class Pet(BaseModel):
        name: str
        legs: int

    for seed in range(4):
        pet = folder_backend.generate_structured(GenerationRequest(prompt="a pet:", max_tokens=40, temperature=1.0,
                                                                   seed=seed), Pet)
        assert isinstance(pet, Pet)


def test_folder_export_is_cached_and_redone_when_the_weights_change(tmp_path):
    folder = train_model(tmp_path / "model", steps=10, seed=0)
    first = rung.backend("llamacpp", model=str(folder))
    exported, stamp = first.gguf_path, first.gguf_path.stat().st_mtime_ns
    assert exported.parent == folder / ".llamacpp" and "-f32-" in exported.name
    echo = GenerationRequest(prompt="the cat sat on the mat", max_tokens=0, echo=True, logprobs=0)
    scores = [p.logprob for p in first.generate(echo).prompt_logprobs]
    first.close()
    again = rung.backend("llamacpp", model=str(folder))
    assert again.gguf_path == exported and exported.stat().st_mtime_ns == stamp  # not exported again
    again.close()

    train_model(folder, steps=30, seed=1)  # a training run saves new weights into the same folder
    changed = rung.backend("llamacpp", model=str(folder))
    assert changed.gguf_path != exported and not exported.exists()  # the stale export is gone
    reference = rung.backend("torch", model=str(folder), device="cpu", precision="fp32")
    for prompt in PROMPTS[:4]:
        assert changed.generate(greedy(prompt)).text == reference.generate(greedy(prompt)).text
    assert [p.logprob for p in changed.generate(echo).prompt_logprobs] != scores  # the new weights, not the old
    f16 = rung.backend("llamacpp", model=str(folder), outtype="f16")
    assert "-f16-" in f16.gguf_path.name and f16.gguf_path.parent == exported.parent
    assert changed.gguf_path.exists()  # an export of another outtype is kept
    changed.close()
    f16.close()
    assert sorted(p.name for p in exported.parent.iterdir()) == sorted([changed.gguf_path.name, f16.gguf_path.name])


def test_threads_and_context_options(model_dir, folder_backend):
    two = rung.backend("llamacpp", model=str(model_dir), threads=2, batch_threads=2)
    for prompt in PROMPTS[:3]:
        assert two.generate(greedy(prompt)).text == folder_backend.generate(greedy(prompt)).text
    two.close()
    assert folder_backend.context_length == 96  # the model's own (llama.cpp rounds its cache up to 256)
    short = rung.backend("llamacpp", model=str(model_dir), context_length=32)
    assert short.context_length == 32
    with pytest.raises(RungError, match="context of 32"):
        short.generate(GenerationRequest(prompt="the cat sat on the mat " * 6, max_tokens=8))
    short.close()


def test_bad_models_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError) as missing:
        rung.backend("llamacpp", model=str(tmp_path / "nowhere.gguf"))
    text = tmp_path / "notes.gguf"
    text.write_text("not a model\n", encoding="utf-8")
    with pytest.raises(RungError, match="is not a GGUF file") as not_gguf:
        rung.backend("llamacpp", model=str(text))
    damaged = tmp_path / "damaged.gguf"
    damaged.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 64)
    with pytest.raises(RungError, match="cannot read") as unreadable:
        rung.backend("llamacpp", model=str(damaged))
    (tmp_path / "empty").mkdir()
    with pytest.raises(RungError) as empty:
        rung.backend("llamacpp", model=str(tmp_path / "empty"))
    for caught in (missing, not_gguf, unreadable, empty):
        assert str(caught.value) and "\n" not in str(caught.value)
    assert "nowhere.gguf" in str(missing.value) and str(tmp_path / "empty") in str(empty.value)


def test_without_llama_cpp_the_backend_says_how_to_install_it(model_dir):
    code = ("import sys; sys.modules['llama_cpp'] = None\n"  # as if llama-cpp-python were not installed
            "import rung\nfrom rung.errors import RungError\n"
            f"try:\n    rung.backend('llamacpp', model={str(model_dir)!r})\n"
            "except RungError as exc:\n    print(exc)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("\n") == 1 and "pip install 'rung-llamacpp[llama-cpp]'" in proc.stdout


def test_chat_template_and_seed_options(model_dir, folder_backend):
    template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    custom = rung.backend("llamacpp", model=str(folder_backend.gguf_path), chat_template=template, seed=5)
    chat = GenerationRequest(messages=(Message("user", "the cat"),), max_tokens=8, temperature=1.0)
    done = custom.generate(chat)
    assert done.usage.prompt_tokens == len(folder_backend.tokenizer.encode("user: the cat\n"))
    assert custom.generate(chat).text == done.text  # the backend's seed: the same sample each time
    assert custom.generate(replace(chat, seed=5)).text == done.text
    assert {custom.generate(replace(chat, seed=s)).text for s in (1, 2, 3)} != {done.text}
    custom.close()
    with pytest.raises(RungError, match="is closed"):
        custom.generate(chat)


def test_repetition_penalty_token_healing_and_min_p_as_rung_torch(folder_backend, torch_backend):
    for prompt in ("the cat", "birds sang in ", "def ad"):
        for fields in ({"repetition_penalty": 1.5}, {"token_healing": True}, {"repetition_penalty": 0.7}):
            ours, theirs = folder_backend.generate(greedy(prompt, **fields)), torch_backend.generate(greedy(prompt,
                                                                                                          **fields))
            assert (ours.text, ours.usage) == (theirs.text, theirs.usage), (prompt, fields)
    penalized = [folder_backend.generate(greedy(p, repetition_penalty=2.0)).text for p in PROMPTS[:4]]
    assert penalized != [folder_backend.generate(greedy(p)).text for p in PROMPTS[:4]]  # the penalty does something
    # min_p 1: only the most likely token survives, so sampling at any temperature is greedy
    only_top = [folder_backend.generate(greedy(p, temperature=1.5, min_p=1.0, seed=s)).text
                for p, s in zip(PROMPTS[:4], range(4))]
    assert only_top == [folder_backend.generate(greedy(p)).text for p in PROMPTS[:4]]

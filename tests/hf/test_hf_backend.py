"""rung-hf: tiny Llama, GPT-2 and Qwen2 checkpoints saved to disk and loaded back as a user's
download would be; generation, batching, streaming, stop strings, chat templates, the
`hf` tokenizer, offline errors, saving, interop with rung-torch and training steps."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import rung
from rung import GenerationRequest, Message, RungError

from hf_models import FAMILIES

PROMPTS = ["the cat", "a dog ran to the park while birds sang", "rain", "over hills rivers and stones"]


def greedy(**kw) -> GenerationRequest:
    return GenerationRequest(temperature=0, **kw)


@pytest.mark.parametrize("family", FAMILIES)
def test_loads_and_generates_with_usage(backend_of, family):
    b = backend_of(family)
    assert b.framework == "torch" and b.capabilities.streaming and b.capabilities.trainable
    done = b.generate(greedy(prompt="the cat sat on", max_tokens=7))
    assert isinstance(done.text, str) and done.finish_reason in ("stop", "length")
    expected_prompt = len(b.hf_tokenizer.encode("the cat sat on"))  # with bos where the family adds one
    assert done.usage.prompt_tokens == expected_prompt
    # "length" exactly at max_tokens; a stop token ends it at or before then
    tokens = done.usage.completion_tokens
    assert tokens == 7 if done.finish_reason == "length" else 1 <= tokens <= 7
    assert b.count_tokens("the cat sat on") == len(b.tokenizer.encode("the cat sat on"))


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_batch_equals_one_by_one(backend_of, family):
    b = backend_of(family)
    requests = [greedy(prompt=p) for p in PROMPTS] + [greedy(messages=[Message("user", "hi there")])]
    batched = b.generate_batch(requests)
    single = [b.generate(r) for r in requests]
    assert [c.text for c in batched] == [c.text for c in single]
    assert [c.usage for c in batched] == [c.usage for c in single]
    assert [c.finish_reason for c in batched] == [c.finish_reason for c in single]


def test_fixed_seed_is_reproducible(backend_of):
    b = backend_of("llama")
    ask = dict(prompt="the dog", temperature=1.0, top_p=0.95, top_k=50, max_tokens=8)
    first = b.generate(GenerationRequest(seed=7, **ask)).text
    assert b.generate(GenerationRequest(seed=7, **ask)).text == first
    others = {b.generate(GenerationRequest(seed=s, **ask)).text for s in (1, 2)}
    assert first not in others  # the seed matters
    # The same seed in a batch gives the same texts on every call.
    batch = [GenerationRequest(seed=3, **{**ask, "prompt": p}) for p in PROMPTS[:3]]
    assert [c.text for c in b.generate_batch(batch)] == [c.text for c in b.generate_batch(batch)]


def test_sampling_defaults_come_from_generation_config(backend_of):
    b = backend_of("qwen2")  # generation_config.json: do_sample, temperature 0.7, top_p 0.8, top_k 20

    def config_for(**kw):
        request = GenerationRequest(prompt="x", **kw)
        return b._generation_config(b._prepare(request)[1])

    default = config_for()
    assert (default.do_sample, default.temperature, default.top_p, default.top_k) == (True, 0.7, 0.8, 20)
    hotter = config_for(temperature=1.2, top_k=0)
    assert (hotter.do_sample, hotter.temperature, hotter.top_p, hotter.top_k) == (True, 1.2, 0.8, 0)
    assert config_for(temperature=0).do_sample is False
    assert config_for(max_tokens=5).max_new_tokens == 5
    # Unseeded default requests sample: two seeds give two texts.
    texts = {b.generate(GenerationRequest(prompt="the", seed=s, max_tokens=8)).text for s in (1, 2)}
    assert len(texts) == 2


@pytest.mark.parametrize("family", FAMILIES)
def test_stream_deltas_concatenate_to_generate(backend_of, family):
    b = backend_of(family)
    for request in (greedy(prompt="the cat sat", max_tokens=16),
                    greedy(messages=[Message("system", "be brief"), Message("user", "the dog")], max_tokens=16)):
        deltas = list(b.stream(request))
        done = b.generate(request)
        assert "".join(d.text for d in deltas) == done.text
        assert all(d.finish_reason is None for d in deltas[:-1])
        assert deltas[-1].finish_reason == done.finish_reason
        assert deltas[-1].usage == done.usage
        assert len(deltas) > 2  # it streamed, it did not hand back one block
    # A consumer that leaves early ends the generation; the backend is free again at once.
    stream = b.stream(greedy(prompt="the cat sat", max_tokens=100))
    next(stream)
    stream.close()
    assert b.generate(greedy(prompt="rain", max_tokens=2)).usage.completion_tokens <= 2


def test_stream_with_a_sentencepiece_tokenizer(model_dirs):
    from hf_models import build_sentencepiece_tokenizer

    from rung_hf.tokenizer import HFTokenizer

    sp = build_sentencepiece_tokenizer()
    assert sp.decode(sp.encode("cat", add_special_tokens=False)) == "cat"  # no leading space alone
    b = rung.backend("hf", model=str(model_dirs["llama"]), tokenizer=HFTokenizer(hf=sp))
    request = greedy(prompt="the cat sat on the mat", max_tokens=24)
    done = b.generate(request)
    deltas = [d.text for d in b.stream(request)]
    assert "".join(deltas) == done.text
    assert " " in done.text.strip()  # words keep the spaces between them


def test_chat_templates_from_the_tokenizer(backend_of):
    chat = [Message("system", "You are terse."), Message("user", "Hi")]
    qwen = backend_of("qwen2").tokenizer.apply_chat_template(chat)
    assert qwen == ("<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                    "<|im_start|>assistant\n")
    llama = backend_of("llama").tokenizer.apply_chat_template(chat)
    assert llama.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>")
    assert llama.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    # GPT-2 has no template: no made-up format; its messages are continued as plain text.
    gpt2 = backend_of("gpt2")
    assert gpt2.tokenizer.chat_template is None
    with pytest.raises(RungError, match="has no chat template"):
        gpt2.tokenizer.apply_chat_template(chat)
    as_text = gpt2.generate(GenerationRequest(messages=chat, temperature=0, max_tokens=6))
    same = gpt2.generate(GenerationRequest(prompt="You are terse.\nHi", temperature=0, max_tokens=6))
    assert (as_text.text, as_text.usage) == (same.text, same.usage)
    # A request's messages go through the template; its token count is the prompt usage.
    b = backend_of("qwen2")
    done = b.generate(GenerationRequest(messages=chat[1:], system="You are terse.", temperature=0, max_tokens=3))
    assert done.usage.prompt_tokens == len(b.tokenizer.encode(qwen))
    # The end-of-turn tokens stop generation as eos does.
    assert b.hf_tokenizer.convert_tokens_to_ids("<|im_end|>") in b.stop_ids
    assert backend_of("llama").hf_tokenizer.convert_tokens_to_ids("<|eot_id|>") in backend_of("llama").stop_ids


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_stop_strings_generate_and_stream(backend_of, family):
    b = backend_of(family)
    full = b.generate(greedy(prompt="the cat", max_tokens=16))
    text = full.text
    assert len(text) > 6
    stop = text[4:7]
    cut = text.find(stop)
    for request in (greedy(prompt="the cat", max_tokens=16, stop=[stop, "never-seen"]),):
        done = b.generate(request)
        assert done.text == text[:cut] and done.finish_reason == "stop"
        assert done.usage.completion_tokens < full.usage.completion_tokens
        deltas = list(b.stream(request))
        assert "".join(d.text for d in deltas) == text[:cut]
        assert deltas[-1].finish_reason == "stop"
        assert all(stop not in d.text for d in deltas)
    # In a batch, each row stops on its own.
    batch = b.generate_batch([greedy(prompt="the cat", max_tokens=16, stop=[stop]),
                              greedy(prompt="rain", max_tokens=16, stop=[stop])])
    assert batch[0].text == text[:cut]
    alone = b.generate(greedy(prompt="rain", max_tokens=16, stop=[stop]))
    assert batch[1].text == alone.text and batch[1].usage == alone.usage


def test_eos_ends_generation_with_stop(backend_of):
    b = backend_of("qwen2")
    request = greedy(prompt="the dog ran", max_tokens=10)
    free = b.generate(request)
    ids = b.hf_tokenizer.encode("the dog ran", add_special_tokens=True)
    import torch

    with torch.no_grad():
        out = b.model.generate(torch.tensor([ids]), max_new_tokens=10, do_sample=False, eos_token_id=None,
                               pad_token_id=b.pad_id)
    third = int(out[0, len(ids) + 2])
    saved = b.stop_ids
    b.stop_ids = [*saved, third]  # pretend the third new token is an end of turn
    try:
        done = b.generate(request)
        streamed = list(b.stream(request))
    finally:
        b.stop_ids = saved
    assert done.finish_reason == "stop" and done.usage.completion_tokens <= 3
    assert free.text.startswith(done.text)
    assert "".join(d.text for d in streamed) == done.text and streamed[-1].usage == done.usage


def test_hf_tokenizer_plugin(model_dirs, tmp_path):
    tok = rung.tokenizer("hf", path=str(model_dirs["qwen2"]))
    assert isinstance(tok, rung.Tokenizer)
    text = "the cat sat. Ünïcödé 😀"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.special_tokens["<|im_end|>"] == tok.eos_id == tok.end_of_turn_id
    assert tok.pad_id == tok.special_tokens["<|endoftext|>"]
    assert tok.vocab_size == len(tok.hf)
    assert tok.apply_chat_template([Message("user", "Hi")], add_generation_prompt=False) == \
        "<|im_start|>user\nHi<|im_end|>\n"
    tok.save(tmp_path / "tok")
    again = rung.tokenizer("hf", path=str(tmp_path / "tok"))
    assert again.encode(text) == ids and again.chat_template == tok.chat_template
    # A chat template given in the options replaces the tokenizer's.
    plain = rung.tokenizer("hf", path=str(model_dirs["gpt2"]),
                           chat_template="{% for m in messages %}[{{ m['content'] }}]{% endfor %}")
    assert plain.apply_chat_template([Message("user", "a"), Message("assistant", "b")]) == "[a][b]"


def test_rung_trained_tokenizer_loads_through_hf(tmp_path, model_dirs):
    bpe = rung.tokenizer("bpe", vocab_size=300, min_frequency=1)
    bpe.train(["the cat sat on the mat. " * 20, "birds sang songs of rain " * 20])
    bpe.save(tmp_path / "bpe")
    tok = rung.tokenizer("hf", path=str(tmp_path / "bpe"))
    text = "the cat sang of rain. ÿ 😀"
    assert tok.encode(text) == bpe.encode(text)
    assert tok.decode(tok.encode(text)) == text
    assert tok.chat_template is None  # rung's tokenizers carry no template unless given one
    bpe.chat_template = "rung"
    bpe.save(tmp_path / "chat")
    chat = [Message("system", "s"), Message("user", "u")]
    assert rung.tokenizer("hf", path=str(tmp_path / "chat")).apply_chat_template(chat) == bpe.apply_chat_template(chat)
    assert tok.eos_id == bpe.eos_id and tok.pad_id == bpe.pad_id and tok.end_of_turn_id == bpe.end_of_turn_id
    # A bare tokenizer.json loads too.
    assert rung.tokenizer("hf", path=str(tmp_path / "bpe" / "tokenizer.json")).encode(text) == bpe.encode(text)


def test_backend_uses_the_runs_tokenizer(model_dirs):
    tok = rung.tokenizer("hf", path=str(model_dirs["gpt2"]))
    b = rung.backend("hf", model=str(model_dirs["gpt2"]), tokenizer=tok, max_tokens=4)
    assert b.hf_tokenizer is tok.hf
    assert b.generate(greedy(prompt="the")).usage.completion_tokens == 4


def test_offline_hub_id_is_one_line_error(tmp_path):
    # In-process: fast, one line, nothing chained.
    with pytest.raises(RungError) as caught:
        rung.backend("hf", model="rung-test/not-in-any-cache")
    message = str(caught.value)
    assert "\n" not in message and caught.value.__cause__ is None
    assert "not in the local cache" in message and "backend.model" in message
    # The way a user meets it: the `rung` CLI in a fresh process with the hub unreachable.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home"),
           "RUNG_CONFIG_DIR": str(tmp_path / "rung-config")}
    env.pop("RUNG_DEBUG", None)
    proc = subprocess.run([sys.executable, "-m", "rung.cli.main", "prompt", "-b", "hf", "-m",
                           "rung-test/not-in-any-cache", "hello"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr  # refused as the options are validated, before any loading
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == [
        "rung: error: backend 'hf': model 'rung-test/not-in-any-cache' is not in the local cache and the hub cannot be "
        "reached (HF_HUB_OFFLINE is set); download it where there is a network or set backend.model to a "
        "local directory"
    ]
    assert "Traceback" not in proc.stderr + proc.stdout


@pytest.fixture
def hub_online(monkeypatch):
    """The environment allows the hub, which lives at a closed local port (refused at once)."""
    from huggingface_hub import constants

    from rung_hf import loading

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    loading.hub_reachable.cache_clear()
    yield
    loading.hub_reachable.cache_clear()


def test_unreachable_hub_without_offline_setting_fails_fast(hub_online):
    with pytest.raises(RungError) as caught:
        rung.backend("hf", model="rung-test/not-in-any-cache")
    assert str(caught.value) == (
        "model 'rung-test/not-in-any-cache' is not in the local cache and the hub cannot be reached; "
        "download it where there is a network or set backend.model to a local directory")
    with pytest.raises(RungError, match=r"\(backend.local_files_only is set\)"):
        rung.backend("hf", model="rung-test/not-in-any-cache", local_files_only=True)


def test_hub_id_in_the_local_cache_loads_offline(model_dirs, tmp_path, monkeypatch):
    """A model downloaded earlier (the hub cache layout) loads by its id with no network."""
    import shutil

    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--rung-test--tiny-qwen2"
    shutil.copytree(model_dirs["qwen2"], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    b = rung.backend("hf", model="rung-test/tiny-qwen2", max_tokens=3)
    assert b.generate(greedy(prompt="the")).usage.completion_tokens == 3
    assert b.tokenizer.apply_chat_template([Message("user", "x")]).startswith("<|im_start|>user")
    tok = rung.tokenizer("hf", path="rung-test/tiny-qwen2")
    assert tok.encode("the cat") == b.tokenizer.encode("the cat")


def test_bad_model_directories(tmp_path, model_dirs):
    with pytest.raises(rung.ConfigError, match="does not exist"):
        rung.backend("hf", model=str(tmp_path / "missing"))
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((model_dirs["gpt2"] / "config.json").read_text())
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(RungError, match="safetensors only"):
        rung.backend("hf", model=str(pickled))
    bare = tmp_path / "no-tokenizer"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        (bare / name).write_bytes((model_dirs["gpt2"] / name).read_bytes())
    with pytest.raises(RungError, match="holds no tokenizer.*backend.tokenizer"):
        rung.backend("hf", model=str(bare))
    assert rung.backend("hf", model=str(bare), tokenizer=str(model_dirs["gpt2"])).tokenizer.vocab_size > 256
    with pytest.raises(rung.ConfigError, match="dtype"):
        rung.backend("hf", model=str(model_dirs["gpt2"]), dtype="float8")


def test_save_in_hf_format_and_load_back(backend_of, tmp_path):
    b = backend_of("qwen2")
    b.save(tmp_path / "saved")
    files = {p.name for p in (tmp_path / "saved").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= files
    assert not any(name.endswith((".bin", ".pt", ".pth", ".pkl")) for name in files)
    again = rung.backend("hf", model=str(tmp_path / "saved"))
    request = greedy(messages=[Message("user", "the cat")], max_tokens=8)
    first, second = b.generate(request), again.generate(request)
    assert (second.text, second.finish_reason, second.usage) == (first.text, first.finish_reason, first.usage)


def test_dtype_option(model_dirs):
    import torch

    b = rung.backend("hf", model=str(model_dirs["llama"]), dtype="bf16", device="cpu", max_tokens=3)
    assert next(b.model.parameters()).dtype == torch.bfloat16
    assert b.generate(greedy(prompt="the")).usage.completion_tokens == 3
    # device_map (accelerate) places the model itself; such a model serves but does not train.
    spread = rung.backend("hf", model=str(model_dirs["llama"]), device_map="auto", max_tokens=2)
    assert spread.generate(greedy(prompt="the")).usage.completion_tokens == 2
    with pytest.raises(RungError, match="device_map"):
        spread.engine()


# ---------------------------------------------------------------------- training and interop


class _Tokens:
    """A BatchStream of fixed random token batches (the engine's contract)."""

    def __init__(self, vocab: int, batch: int = 4, seq: int = 16) -> None:
        import numpy as np

        rng = np.random.default_rng(0)
        self.data = rng.integers(0, vocab, size=(8, batch, seq), dtype=np.int64)
        self.i = 0

    def __next__(self):
        batch = {"input_ids": self.data[self.i % len(self.data)]}
        self.i += 1
        return batch

    def state_dict(self):
        return {"i": self.i}

    def load_state_dict(self, state):
        self.i = int(state["i"])


def _lm_objective(model, batch):
    import torch.nn.functional as F

    from rung_torch.modeling import forward_logits

    ids = batch["input_ids"]
    logits = forward_logits(model, ids[:, :-1])
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1))
    return loss, {}


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_training_steps_through_torch_engine_lower_the_loss(model_dirs, tmp_path, family):
    from rung.config import make_config
    from rung.runner import Run
    from rung.training import TrainingOptions

    b = rung.backend("hf", model=str(model_dirs[family]), device="cpu", precision="fp32")
    config = make_config({"backend": {"name": "hf", "model": str(model_dirs[family])},
                          "output_dir": str(tmp_path / "run"), "logging": {"sinks": [{"name": "jsonl"}]}})
    (tmp_path / "run").mkdir()
    run = Run(config)
    engine = b.engine()
    assert engine.framework == "torch" and engine.model is b.model
    options = TrainingOptions(steps=10, batch_size=4, learning_rate=1e-2, warmup_steps=0, log_every=1,
                              resume="never")
    try:
        result = engine.fit(_lm_objective, _Tokens(b.tokenizer.vocab_size), options, run)
    finally:
        run.close()
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    assert result.steps == 10 and len(losses) >= 8
    assert losses[-1] < losses[0] - 0.5
    # The trained model still generates (in eval mode, then back to the mode it was in) and
    # saves in the HF format.
    b.model.train()
    assert b.generate(greedy(prompt="the", max_tokens=3)).usage.completion_tokens >= 1
    assert b.model.training
    b.save(tmp_path / "trained")
    assert (tmp_path / "trained" / "model.safetensors").is_file()


def test_interop_with_rung_torch(model_dirs, tmp_path):
    import torch

    from rung_torch.modeling import forward_logits

    ids = torch.tensor([[5, 17, 42, 7, 99, 3, 64, 12]])
    # rung-torch checkpoint -> hf backend
    bpe = rung.tokenizer("bpe", vocab_size=300, min_frequency=1, chat_template="rung")
    bpe.train(["the cat sat on the mat. " * 20, "birds sang songs of rain " * 20])
    ours = rung.backend("torch", model="test", tokenizer=bpe, device="cpu", precision="fp32")
    ours.save(tmp_path / "rung-ckpt")
    hf = rung.backend("hf", model=str(tmp_path / "rung-ckpt"), device="cpu")
    assert type(hf.model).__name__ == "LlamaForCausalLM"
    with torch.no_grad():
        a = forward_logits(ours.model.eval(), ids)
        b = forward_logits(hf.model, ids)
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
    chat = [Message("user", "the cat")]
    assert hf.tokenizer.apply_chat_template(chat) == bpe.apply_chat_template(chat)
    assert bpe.end_of_turn_id in hf.stop_ids and bpe.eos_id in hf.stop_ids  # a chat reply ends at <|end|>
    assert hf.generate(GenerationRequest(messages=chat, temperature=0, max_tokens=4)).usage.completion_tokens >= 1
    # hf Llama saved here -> rung-torch
    llama = rung.backend("hf", model=str(model_dirs["llama"]), device="cpu")
    llama.save(tmp_path / "hf-llama")
    back = rung.backend("torch", model=str(tmp_path / "hf-llama"), device="cpu", precision="fp32")
    with torch.no_grad():
        a = forward_logits(llama.model, ids)
        b = forward_logits(back.model.eval(), ids)
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


def test_a_raw_prompt_that_starts_with_bos_gets_no_second_one(backend_of):
    # A chat rendered by the template (which writes the bos) and sent raw, as sft/lora's
    # eval_metric does, is the same prompt as the chat itself: one bos, same answer.
    b = backend_of("llama")
    chat = [Message("user", "hi there")]
    rendered = b.tokenizer.apply_chat_template(chat, add_generation_prompt=True)
    assert rendered.startswith(b.hf_tokenizer.bos_token)
    as_chat = b.generate(greedy(messages=chat, max_tokens=6))
    as_raw = b.generate(greedy(prompt=rendered, raw=True, max_tokens=6))
    assert as_raw.usage.prompt_tokens == as_chat.usage.prompt_tokens
    assert as_raw.text == as_chat.text

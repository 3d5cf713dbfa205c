"""The `torch` backend through rung's API: build, generate, save, load back, options."""

from __future__ import annotations

import asyncio
import json

import pytest

import rung
from rung.errors import ConfigError, RungError
from rung.interfaces import TrainableBackend
from rung.records import GenerationRequest


def test_the_backend_builds_from_a_preset_with_a_tokenizer(make_backend, byte_tokenizer):
    backend = make_backend()
    assert isinstance(backend, TrainableBackend)
    assert backend.framework == "torch"
    assert backend.capabilities.trainable and backend.capabilities.streaming and backend.capabilities.chat
    assert backend.model.config.vocab_size == byte_tokenizer.vocab_size
    assert str(backend.device) == "cpu" and backend.decode_precision == "fp32"
    assert backend.count_tokens("héllo") == 6  # bytes
    completion = rung.ask(backend, "Hi", max_tokens=5)
    assert completion.usage.completion_tokens == 5 and completion.model == "test"
    assert asyncio.run(backend.agenerate(GenerationRequest(prompt="Hi", max_tokens=5))).text == \
        backend.generate(GenerationRequest(prompt="Hi", max_tokens=5)).text


def test_save_then_load_gives_the_same_outputs_and_tokenizer(make_backend, tmp_path):
    backend = make_backend(architecture={"tie_embeddings": False})
    request = GenerationRequest(prompt="Save me", max_tokens=20, temperature=0.7, seed=3)
    expected = backend.generate(request)
    backend.save(tmp_path)
    names = {p.name for p in tmp_path.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pkl")) for n in names)
    assert json.loads((tmp_path / "config.json").read_text())["tie_word_embeddings"] is False

    loaded = rung.backend("torch", model=str(tmp_path), device="cpu")  # the tokenizer comes from the folder
    assert loaded.tokenizer.vocab_size == backend.tokenizer.vocab_size
    assert loaded.generate(request).text == expected.text


def test_a_preset_without_a_tokenizer_is_a_config_error():
    with pytest.raises(ConfigError, match="preset and needs a tokenizer"):
        rung.backend("torch", model="test")
    with pytest.raises(ConfigError, match="'runs/missing' is not a checkpoint directory"):
        rung.backend("torch", model="runs/missing")
    with pytest.raises(ConfigError, match="unknown model preset 'tset'"):
        rung.backend("torch", model="tset", tokenizer=rung.tokenizer("byte"))
    with pytest.raises(ConfigError, match="backend 'torch': precision"):
        rung.backend("torch", model="test", precision="fp64")


def test_a_folder_without_weights_is_a_clear_error(tmp_path, byte_tokenizer):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(RungError, match="config.json: no 'vocab_size' field"):
        rung.backend("torch", model=str(tmp_path), tokenizer=byte_tokenizer)
    from rung.model_config import preset

    preset("test", vocab_size=300).save(tmp_path)
    with pytest.raises(RungError, match="no model.safetensors"):
        rung.backend("torch", model=str(tmp_path), tokenizer=byte_tokenizer)


def test_architecture_overrides_and_options_validate(make_backend):
    backend = make_backend(architecture={"dim": 48, "n_heads": 6, "n_kv_heads": 3, "n_layers": 1},
                           max_tokens=7)
    config = backend.model.config
    assert (config.dim, config.n_heads, config.kv_heads, config.n_layers) == (48, 6, 3, 1)
    assert backend.generate(GenerationRequest(prompt="Hi")).usage.completion_tokens == 7
    from rung_torch.options import TorchOptions
    from rung.model_config import LocalModelOptions

    assert issubclass(TorchOptions, LocalModelOptions)
    with pytest.raises(ValueError):
        TorchOptions(modle="test")


def test_a_transformers_checkpoint_brings_its_own_tokenizer_and_chat_template(tmp_path, byte_tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    byte_tokenizer.save(tmp_path / "rung")
    hf_tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "rung" / "tokenizer.json"),
                                           eos_token="<|endoftext|>")
    hf_tokenizer.chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}[assistant] "
    hf_tokenizer.save_pretrained(tmp_path / "hf")
    LlamaForCausalLM(LlamaConfig(
        vocab_size=byte_tokenizer.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )).save_pretrained(tmp_path / "hf")

    backend = rung.backend("torch", model=str(tmp_path / "hf"), device="cpu")
    assert type(backend.tokenizer).__name__ == "TransformersTokenizer"
    assert backend.tokenizer.eos_id == byte_tokenizer.eos_id
    done = rung.ask(backend, "Hi", max_tokens=4)
    assert done.usage.prompt_tokens == len("[user] Hi\n[assistant] ")  # bytes, through its template
    assert 1 <= done.usage.completion_tokens <= 4

"""The `jax` backend through rung's config and API: options, clear errors, save/load."""

from __future__ import annotations

import pytest

import rung
from rung.errors import ConfigError, RungError
from rung.records import GenerationRequest


def test_config_switches_framework_by_name_only():
    from rung.config import make_config

    base = {"output_dir": "runs/x", "backend": {"name": "torch", "model": "tiny", "precision": "fp32"}}
    config = make_config({**base, "backend": {**base["backend"], "name": "jax"}})
    assert config.backend.name == "jax" and config.backend.mesh.data == -1 and config.backend.mesh.tensor == 1
    assert not config.backend.distributed.wanted
    with pytest.raises(ConfigError, match="backend.mesh"):
        make_config({**base, "backend": {"name": "jax", "mesh": {"data": 2, "pipeline": 2}}})


def test_clear_errors(tmp_path):
    from rung_tokenizers import ByteTokenizer

    with pytest.raises(ConfigError, match="needs a tokenizer"):
        rung.backend("jax", model="test")
    with pytest.raises(ConfigError, match="devices"):
        rung.backend("jax", model="test", tokenizer=ByteTokenizer(), mesh={"data": 3})
    with pytest.raises(ConfigError, match="no config.json|holds no tokenizer"):
        rung.backend("jax", model=str(tmp_path), tokenizer=ByteTokenizer())
    backend = rung.backend("jax", model="test", tokenizer=ByteTokenizer(), architecture={"max_seq_len": 16})
    with pytest.raises(RungError, match=r"^the prompt \(17 tokens\) plus max_tokens \(1\) is 18 tokens, more than the "
                                        r"model's context of 16; shorten the prompt or lower max_tokens$"):
        backend.generate(GenerationRequest(prompt="x" * 17, max_tokens=1))
    with pytest.raises(RungError, match="^the prompt is 16 tokens, which leaves no room"):
        backend.generate(GenerationRequest(prompt="x" * 16))
    # Left unset, max_tokens is lowered to the room left, which the whole-loop decode fills.
    done = backend.generate(GenerationRequest(prompt="x" * 13))
    assert done.usage.completion_tokens == 3 if done.finish_reason == "length" else done.usage.completion_tokens <= 3
    with pytest.raises(RungError, match=r"^top_p must be in \(0, 1\], got 1.5$"):
        backend.generate(GenerationRequest(prompt="x", top_p=1.5))


def test_save_writes_weights_config_and_tokenizer_and_loads_back(tmp_path):
    import json

    import numpy as np

    from rung_tokenizers import ByteTokenizer

    backend = rung.backend("jax", model="test", tokenizer=ByteTokenizer(), seed=5)
    backend.save(tmp_path)
    hf = json.loads((tmp_path / "config.json").read_text())
    assert hf["architectures"] == ["LlamaForCausalLM"] and hf["num_key_value_heads"] == 2
    assert (tmp_path / "tokenizer.json").is_file() and (tmp_path / "model.safetensors").is_file()
    again = rung.backend("jax", model=str(tmp_path))  # the tokenizer comes from the folder
    assert again.tokenizer.vocab_size == backend.tokenizer.vocab_size
    ids = np.arange(10)[None]
    np.testing.assert_array_equal(np.asarray(again.model(ids)), np.asarray(backend.model(ids)))

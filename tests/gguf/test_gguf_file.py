"""The GGUF file read back with gguf's own reader: llama.cpp's metadata, tokenizer and tensors,
and the Ollama Modelfile written beside it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from rung.exporting import export


def fields(path: Path) -> tuple[dict, dict]:
    """(metadata key -> value, tensor name -> (shape rows-first, type name)) of a GGUF file."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    metadata = {name: field.contents() for name, field in reader.fields.items()}
    tensors = {t.name: (tuple(int(n) for n in reversed(t.shape)), t.tensor_type.name) for t in reader.tensors}
    return metadata, tensors


def tokenizer_json(folder: Path) -> dict:
    return json.loads((folder / "tokenizer.json").read_text())


def test_rung_model_metadata_tokenizer_and_tensors(rung_model):
    written = export("gguf", rung_model)
    assert written == rung_model / "rung-tiny-f16.gguf"  # default: <source>/<name>-<outtype>.gguf
    meta, tensors = fields(written)
    config = json.loads((rung_model / "config.json").read_text())
    expected = {
        "general.architecture": "llama", "general.name": "rung-tiny", "general.file_type": 1,
        "llama.context_length": config["max_position_embeddings"], "llama.embedding_length": config["hidden_size"],
        "llama.block_count": config["num_hidden_layers"], "llama.feed_forward_length": config["intermediate_size"],
        "llama.attention.head_count": config["num_attention_heads"],
        "llama.attention.head_count_kv": config["num_key_value_heads"],
        "llama.rope.dimension_count": config["head_dim"], "llama.vocab_size": config["vocab_size"],
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2", "tokenizer.ggml.add_bos_token": False,
    }
    assert {k: meta.get(k) for k in expected} == expected
    assert meta["llama.rope.freq_base"] == pytest.approx(config["rope_theta"])
    assert meta["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(config["rms_norm_eps"])
    assert config["num_key_value_heads"] < config["num_attention_heads"]  # grouped-query attention is covered

    # One token per embedding row: the tokenizer's, then unused padding entries
    spec = tokenizer_json(rung_model)
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    assert len(tokens) == len(types) == config["vocab_size"]
    vocab = {**spec["model"]["vocab"], **{a["content"]: a["id"] for a in spec["added_tokens"]}}
    assert all(tokens[i] == text for text, i in vocab.items())
    assert tokens[len(vocab):] == [f"[PAD{i}]" for i in range(len(vocab), config["vocab_size"])]
    assert set(types[len(vocab):]) == {5}  # UNUSED
    assert all(types[a["id"]] == 3 for a in spec["added_tokens"])  # CONTROL
    assert meta["tokenizer.ggml.merges"] == [m if isinstance(m, str) else " ".join(m)
                                             for m in spec["model"]["merges"]]
    end = vocab["<|endoftext|>"]
    assert (meta["tokenizer.ggml.bos_token_id"], meta["tokenizer.ggml.eos_token_id"]) == (end, end)
    assert meta["tokenizer.ggml.padding_token_id"] == vocab["<|pad|>"]
    assert meta["tokenizer.ggml.eot_token_id"] == vocab["<|end|>"]
    assert meta["tokenizer.chat_template"] == json.loads(
        (rung_model / "tokenizer_config.json").read_text())["chat_template"]

    # llama.cpp's names; tied embeddings: no output.weight; norms f32, the rest f16
    assert "output.weight" not in tensors
    dim, kv = config["hidden_size"], config["num_key_value_heads"] * config["head_dim"]
    assert tensors["token_embd.weight"] == ((config["vocab_size"], dim), "F16")
    assert tensors["output_norm.weight"] == ((dim,), "F32")
    for i in range(config["num_hidden_layers"]):
        assert tensors[f"blk.{i}.attn_q.weight"] == ((dim, dim), "F16")
        assert tensors[f"blk.{i}.attn_k.weight"] == ((kv, dim), "F16")
        assert tensors[f"blk.{i}.ffn_down.weight"] == ((dim, config["intermediate_size"]), "F16")
        assert tensors[f"blk.{i}.attn_norm.weight"][1] == tensors[f"blk.{i}.ffn_norm.weight"][1] == "F32"
    assert len(tensors) == 2 + 9 * config["num_hidden_layers"]


def test_query_and_key_rows_are_reordered_for_llama_cpp_rotary(rung_model, tmp_path):
    """Each head's rows [x0..x(d/2-1), y0..] become [x0, y0, x1, y1, ...]; other weights are unchanged (f32)."""
    from gguf import GGUFReader
    from safetensors.numpy import load_file

    written = export("gguf", rung_model, tmp_path / "f32.gguf", {"outtype": "f32"})
    stored = {t.name: np.array(t.data).reshape(tuple(reversed([int(n) for n in t.shape])))
              for t in GGUFReader(str(written)).tensors}
    original = load_file(str(rung_model / "model.safetensors"))
    config = json.loads((rung_model / "config.json").read_text())
    d = config["head_dim"]
    for proj, heads in (("q", config["num_attention_heads"]), ("k", config["num_key_value_heads"])):
        before, after = original[f"model.layers.1.self_attn.{proj}_proj.weight"], stored[f"blk.1.attn_{proj}.weight"]
        for h in range(heads):
            for i in range(d // 2):
                np.testing.assert_array_equal(after[h * d + 2 * i], before[h * d + i])
                np.testing.assert_array_equal(after[h * d + 2 * i + 1], before[h * d + d // 2 + i])
    np.testing.assert_array_equal(stored["blk.1.attn_v.weight"], original["model.layers.1.self_attn.v_proj.weight"])
    np.testing.assert_array_equal(stored["token_embd.weight"], original["model.embed_tokens.weight"])


@pytest.mark.parametrize("outtype, weight_type, file_type", [("q8_0", "Q8_0", 7), ("bf16", "BF16", 32)])
def test_other_types(rung_model, tmp_path, outtype, weight_type, file_type):
    meta, tensors = fields(export("gguf", rung_model, tmp_path / "out.gguf", {"outtype": outtype}))
    assert meta["general.file_type"] == file_type
    assert {kind for name, (_, kind) in tensors.items() if not name.endswith("norm.weight")} == {weight_type}
    assert {kind for name, (_, kind) in tensors.items() if name.endswith("norm.weight")} == {"F32"}


def test_transformers_llama_adds_bos_and_keeps_its_head(hf_llama, tmp_path):
    meta, tensors = fields(export("gguf", hf_llama, tmp_path / "llama.gguf"))
    config = json.loads((hf_llama / "config.json").read_text())
    ids = {t: i for i, t in enumerate(meta["tokenizer.ggml.tokens"])}
    assert tensors["output.weight"] == ((config["vocab_size"], config["hidden_size"]), "F16")  # not tied
    assert meta["tokenizer.ggml.add_bos_token"] is True  # its post-processor puts <|begin_of_text|> first
    assert meta["tokenizer.ggml.bos_token_id"] == ids["<|begin_of_text|>"]
    assert meta["tokenizer.ggml.eos_token_id"] == ids["<|eot_id|>"]
    assert meta["tokenizer.ggml.eot_token_id"] == ids["<|eot_id|>"]


def test_modelfile_beside_the_file(rung_model, hf_llama, tmp_path):
    written = export("gguf", rung_model, tmp_path / "rung" / "tiny.gguf")
    text = (written.parent / "Modelfile").read_text()
    assert text.startswith("FROM ./tiny.gguf\n")
    # rung's format, each role as prefix + content + suffix, then the generation prompt
    assert ('{{ if eq .Role "user" }}<|user|>\n{{ .Content }}<|end|>\n{{ else if eq .Role "assistant" }}'
            '<|assistant|>\n{{ .Content }}<|end|>\n{{ end }}{{ end }}<|assistant|>\n"""') in text.replace(
                '{{ if eq .Role "system" }}<|system|>\n{{ .Content }}<|end|>\n{{ else if', "{{ if")
    assert text.splitlines()[-2:] == ['PARAMETER stop "<|end|>"', 'PARAMETER stop "<|endoftext|>"']

    llama = (export("gguf", hf_llama, tmp_path / "llama" / "l.gguf").parent / "Modelfile").read_text()
    # bos is added by llama.cpp (add_bos), so the template does not write it again
    assert 'TEMPLATE """{{ range .Messages }}{{ if eq .Role "system" }}<|start_header_id|>system' in llama
    assert 'PARAMETER stop "<|eot_id|>"' in llama

    # no chat template: the model continues the prompt as it is
    plain = tmp_path / "plain"
    shutil.copytree(rung_model, plain)
    config = json.loads((plain / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (plain / "tokenizer_config.json").write_text(json.dumps(config))
    bare = (export("gguf", plain, tmp_path / "plain-out" / "p.gguf").parent / "Modelfile").read_text()
    assert 'TEMPLATE """{{ .Prompt }}"""' in bare and 'PARAMETER stop "<|endoftext|>"' in bare
    assert "tokenizer.chat_template" not in fields(tmp_path / "plain-out" / "p.gguf")[0]

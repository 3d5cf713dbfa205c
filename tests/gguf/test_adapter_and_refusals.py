"""A LoRA adapter is merged before export; what cannot be exported is refused in one line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from click.testing import CliRunner

from rung.cli.main import cli
from rung.errors import ConfigError
from rung.exporting import export
from tests.gguf.models import gguf_model, greedy, merged_reference, original_model


def test_lora_adapter_is_merged_first(hf_llama, lora_adapter, tmp_path):
    written = export("gguf", lora_adapter)  # default: beside the adapter
    assert written == lora_adapter / "lora-adapter-f16.gguf" and (lora_adapter / "Modelfile").is_file()
    # transformers reads a folder with adapter_config.json as its base: load the file from elsewhere
    copy = tmp_path / written.name
    shutil.copy(written, copy)
    logits_of, _ = gguf_model(copy)
    merged = merged_reference(hf_llama, lora_adapter)
    ids = torch.tensor([[1, 40, 41, 42, 43, 44, 45, 46, 47]])
    with torch.no_grad():
        expected, got, base = merged(ids).logits, logits_of(ids), original_model(hf_llama)(ids)
    scale = expected.abs().max().item()
    assert (got - expected).abs().max().item() <= 5e-3 * scale
    assert (base - expected).abs().max().item() > 0.1 * scale  # the adapter does change the model
    for prompt in ([1, 50, 60], [1, 70, 80, 90]):
        assert greedy(logits_of, prompt) == greedy(lambda x: merged(x).logits, prompt)


def edited(folder: Path, tmp_path: Path, name: str, **config) -> Path:
    """A copy of `folder` whose config.json has `config` merged in."""
    copy = tmp_path / name
    shutil.copytree(folder, copy)
    data = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**data, **config}))
    return copy


def refusal(source: Path, *options: str) -> str:
    """The error `rung export SOURCE out.gguf --format gguf OPTIONS` stops with (it must stop)."""
    out = CliRunner().invoke(cli, ["export", str(source), str(source / "out.gguf"), "--format", "gguf", *options])
    assert out.exit_code != 0
    assert isinstance(out.exception, ConfigError), out.output
    message = str(out.exception)
    assert "\n" not in message and not (source / "out.gguf").exists()
    return message


def test_refusals(hf_llama, tmp_path):
    from tests.hf.hf_models import build_sentencepiece_tokenizer, save_tiny_model

    gpt2 = save_tiny_model("gpt2", tmp_path / "gpt2")
    assert "it is a 'gpt2' model" in refusal(gpt2, "outtype=q8_0")
    mistral = edited(hf_llama, tmp_path, "mistral", model_type="mistral", architectures=["MistralForCausalLM"],
                     sliding_window=4096)
    assert "it is a 'mistral' model" in refusal(mistral)
    windowed = edited(hf_llama, tmp_path, "windowed", sliding_window=64)
    assert "sliding-window attention" in refusal(windowed)
    scaled = edited(hf_llama, tmp_path, "scaled", rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                                                 "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                                 "original_max_position_embeddings": 64})
    assert "scales rotary positions ('llama3')" in refusal(scaled)
    sentencepiece = edited(hf_llama, tmp_path, "sentencepiece")
    for file in ("tokenizer.json", "tokenizer_config.json"):
        (sentencepiece / file).unlink()
    build_sentencepiece_tokenizer().save_pretrained(str(sentencepiece))
    assert "not byte-level BPE" in refusal(sentencepiece)
    assert "outtype" in refusal(hf_llama, "outtype=q4_k")
    no_model = tmp_path / "empty"
    no_model.mkdir()
    assert "no config.json" in refusal(no_model)


def test_cli_exports_and_a_refusal_is_one_line_without_traceback(rung_model, hf_llama, tmp_path):
    rung = str(Path(sys.executable).with_name("rung"))
    target = tmp_path / "cli" / "tiny-q8.gguf"
    done = subprocess.run([rung, "export", str(rung_model), str(target), "--format", "gguf", "outtype=q8_0"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == f"exported {rung_model} as gguf: {target}"
    from gguf import GGUFReader

    assert GGUFReader(str(target)).get_tensor(1).tensor_type.name in ("Q8_0", "F32")
    scaled = edited(hf_llama, tmp_path, "scaled", rope_scaling={"rope_type": "linear", "factor": 2.0})
    failed = subprocess.run([rung, "export", str(scaled), str(tmp_path / "x.gguf"), "--format", "gguf"],
                            capture_output=True, text=True)
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    assert failed.stderr.strip().splitlines() == [
        f"rung: error: export --format gguf: {scaled} cannot be exported: config.json rope_scaling scales "
        "rotary positions ('linear'), which is not exported"]

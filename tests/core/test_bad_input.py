"""Input that is not what it claims, and errors that point the right way (issue 16).

A model folder whose config.json is not JSON, not an object, or holds a missing or bad field
is one ConfigError line naming the file and the config.json key on the torch, jax and hf
backends; a bad `backend.architecture` value names its option key; transformers' refusals
are said whole; an override index past a list's end says so; an empty data file names itself.
Real backends on a tiny saved model, real CLI subprocesses.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import rung
from rung.errors import ConfigError

# rung's own field names and pydantic's dump: what a config.json error never shows.
INTERNAL_NAMES = re.compile(r"\b(dim|n_heads|n_kv_heads|n_layers|hidden_dim)\b|validation error for|pydantic", re.I)


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> Path:
    """A tiny Llama (rung's `test` preset, byte tokenizer) saved as transformers reads it."""
    folder = tmp_path_factory.mktemp("model") / "good"
    rung.backend("torch", model="test", tokenizer=rung.tokenizer("byte"), device="cpu").save(folder)
    return folder


def damaged(model_folder: Path, tmp_path: Path, content: bytes | dict | list) -> Path:
    """A copy of the model whose config.json holds `content` (bytes as they are, else as JSON)."""
    folder = tmp_path / "model"
    shutil.copytree(model_folder, folder)
    raw = content if isinstance(content, bytes) else json.dumps(content).encode()
    (folder / "config.json").write_bytes(raw)
    return folder


def good_config(model_folder: Path) -> dict:
    return json.loads((model_folder / "config.json").read_text(encoding="utf-8"))


def without(config: dict, key: str) -> dict:
    return {k: v for k, v in config.items() if k != key}


# case -> (what config.json holds, built from the good one; what the line must say)
SHAPES = {
    "not JSON": (lambda good: b'{"hidden_size": 32,', ":1:"),
    "not UTF-8": (lambda good: b'{"hidden_size": "\xff\xfe"}', "not UTF-8"),
    "a list": (lambda good: [good], "got a list"),
}
FIELDS = {
    "missing field": (lambda good: without(good, "hidden_size"), "'hidden_size'"),
    "wrong type": (lambda good: {**good, "hidden_size": "big"}, "hidden_size"),
    "fields that do not fit": (lambda good: {**good, "hidden_size": 36}, "hidden_size 36"),
}


def load(backend: str, folder: Path) -> None:
    options = {"device": "cpu"} if backend in ("torch", "jax") else {}
    rung.backend(backend, model=str(folder), **options)


def assert_one_line_naming(message: str, folder: Path, says: str) -> None:
    assert "\n" not in message, message
    assert str(folder / "config.json") in message, message
    assert says in message, message


@pytest.mark.parametrize("backend", ["torch", "jax", "hf"])
@pytest.mark.parametrize("case", list(SHAPES))
def test_a_config_json_that_is_not_a_json_object_names_the_file(backend, case, model_folder, tmp_path):
    make, says = SHAPES[case]
    folder = damaged(model_folder, tmp_path, make(good_config(model_folder)))
    with pytest.raises(ConfigError) as caught:
        load(backend, folder)
    assert_one_line_naming(str(caught.value), folder, says)


@pytest.mark.parametrize("backend", ["torch", "jax"])
@pytest.mark.parametrize("case", list(FIELDS))
def test_a_bad_config_json_field_is_named_as_written_there(backend, case, model_folder, tmp_path):
    make, says = FIELDS[case]
    folder = damaged(model_folder, tmp_path, make(good_config(model_folder)))
    with pytest.raises(ConfigError) as caught:
        load(backend, folder)
    message = str(caught.value)
    assert_one_line_naming(message, folder, says)
    assert not INTERNAL_NAMES.search(message), message


@pytest.mark.parametrize("value, cause", [("big", "got str (value: 'big')"), (33, "(33)")])
def test_the_hf_backend_says_transformers_refusal_whole(value, cause, model_folder, tmp_path):
    folder = damaged(model_folder, tmp_path, {**good_config(model_folder), "hidden_size": value})
    with pytest.raises(ConfigError) as caught:
        load("hf", folder)
    message = str(caught.value)
    assert_one_line_naming(message, folder, "'hidden_size'" if value == "big" else "hidden size")
    # The cause follows transformers' heading ("Validation error for field 'hidden_size':").
    assert cause in message and not message.rstrip().endswith(":"), message


def test_the_hf_backend_says_weights_config_json_does_not_describe_in_one_line(model_folder, tmp_path, capfd):
    # Without hidden_size transformers builds 4096-wide layers: its report table is not the error.
    folder = damaged(model_folder, tmp_path, without(good_config(model_folder), "hidden_size"))
    with pytest.raises(ConfigError) as caught:
        load("hf", folder)
    message = str(caught.value)
    assert_one_line_naming(message, folder, "do not have the shapes")
    assert "4096" in message and "32" in message, message
    assert "LOAD REPORT" not in capfd.readouterr().err


@pytest.mark.parametrize("backend", ["torch", "jax"])
@pytest.mark.parametrize("architecture, says", [
    ({"dim": 36}, "backend.architecture: the head dimension (dim 36 / n_heads 4 = 9)"),
    ({"n_kv_heads": 3}, "backend.architecture: n_heads 4 is not divisible by n_kv_heads 3"),
    ({"dim": "wide"}, "backend.architecture.dim: input should be a valid integer"),
    ({"dimm": 64}, "backend.architecture.dimm: not an architecture field (did you mean 'dim'?)"),
])
def test_a_bad_architecture_option_is_named_by_its_option_key(backend, architecture, says):
    with pytest.raises(ConfigError) as caught:
        rung.backend(backend, model="test", tokenizer=rung.tokenizer("byte"), device="cpu",
                     architecture=architecture)
    message = str(caught.value)
    assert message.startswith(says) and "\n" not in message and "validation error" not in message, message


@pytest.mark.parametrize("source", ["preference_jsonl", "prompts_jsonl", "chat_jsonl"])
def test_an_empty_data_file_is_named(source, tmp_path):
    from rung.plugins import get_plugins
    from rung.runner import build

    from rung.api import make_config_section

    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n", encoding="utf-8")  # blank lines only: no record
    data = build(get_plugins(), "data_source", make_config_section("data_source", {"name": source, "path": str(empty)}))
    with pytest.raises(ConfigError) as caught:
        list(data.read())
    assert str(caught.value).startswith(f"{empty}: no records"), str(caught.value)


# ---------------------------------------------------------------- through the CLI, as a user meets them


def rung_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "RUNG_CONFIG_DIR": str(cwd / "rung-config")}
    env.pop("RUNG_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "rung.cli.main", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=600)


def the_one_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode not in (0, None), proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.mark.parametrize("backend", ["torch", "hf"])
def test_the_cli_says_a_bad_config_json_field_in_one_line(backend, model_folder, tmp_path):
    folder = damaged(model_folder, tmp_path, {**good_config(model_folder), "hidden_size": "big"})
    line = the_one_line(rung_cli("prompt", "-b", backend, "-m", str(folder), "hello", cwd=tmp_path))
    assert str(folder / "config.json") in line and "hidden_size" in line and "'big'" in line, line


def test_an_override_index_past_the_end_says_so(tmp_path):
    config = tmp_path / "pretrain.yaml"
    config.write_text("data: {name: corpus, sources: [{name: files, paths: [texts/]}]}\n"
                      "backend: {name: torch, model: test}\ntokenizer: {name: byte}\n"
                      "trainer: {name: pretrain, steps: 1}\n", encoding="utf-8")
    line = the_one_line(rung_cli("config", "validate", str(config), "data.sources.5.paths=x", cwd=tmp_path))
    assert "data.sources has 1 item; index 5 is out of range" in line and "not a section" not in line, line


def test_an_empty_chat_file_is_named_by_rung_run(tmp_path):
    empty = tmp_path / "chat.jsonl"
    empty.write_text("", encoding="utf-8")
    config = tmp_path / "sft.yaml"
    config.write_text(f"output_dir: {tmp_path / 'run'}\nbackend: {{name: torch, model: test, device: cpu}}\n"
                      f"tokenizer: {{name: byte}}\ndata: {{name: chat_jsonl, path: {empty}}}\n"
                      "trainer: {name: sft, steps: 1, batch_size: 2}\n", encoding="utf-8")
    line = the_one_line(rung_cli("run", str(config), cwd=tmp_path))
    assert line == f"rung: error: {empty}: no records (empty, or only blank lines); a data file holds one " \
                   "JSON object per line", line

"""Issue 16, wasted minutes: paths checked before the long work, a huge chat message cut in
bounded memory, and a resumed run's metrics.jsonl holding each step once.

Each test fails on the code before the fix: `rung config validate` called a config with a
missing model folder valid; a 10 MB message took ~1.4-1.9 GB to format (measured); a resumed
run's metrics.jsonl held the steps it logged after its checkpoint twice.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENGINE_TRAIN = ROOT / "tests" / "torch" / "engine_train.py"


def rung_cli(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "RUNG_CONFIG_DIR": str(cwd / "cfg"),
            "HF_HOME": str(cwd / "hf-home"), **env}
    full.pop("RUNG_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "rung.cli.main", *args], capture_output=True, text=True,
                          env=full, cwd=cwd, timeout=600)


# ---------------------------------------------------------------------- paths, before the work


def write_config(folder: Path, text: str) -> Path:
    path = folder / "run.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_config_validate_names_every_missing_path_by_line(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "chat.jsonl").write_text('{"prompt": "a", "completion": "b"}\n')
    (tmp_path / "not_an_adapter").mkdir()
    config = write_config(tmp_path, """\
backend:
  name: torch
  model: runs/pretrain/model
  adapter: not_an_adapter
tokenizer: {name: byte}
data:
  name: chat_jsonl
  path: [data/chat.jsonl, "data/*.json"]
trainer: {name: sft, steps: 1}
""")
    proc = rung_cli("config", "validate", str(config), cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[0].startswith(f"rung: error: {config}:3: backend.model: 'runs/pretrain/model' is not a "
                               "checkpoint directory (it does not exist) nor a preset"), lines
    assert f"{config}:4: backend.adapter: 'not_an_adapter' is not a PEFT adapter directory " \
           "(no adapter_config.json in it)" in proc.stderr
    assert f"{config}:8: data.path: no file matches 'data/*.json'" in proc.stderr
    # The same config with what exists is valid: a preset, an existing file and a matching glob.
    fixed = write_config(tmp_path, config.read_text().replace("runs/pretrain/model", "test")
                         .replace("  adapter: not_an_adapter\n", "").replace("data/*.json", "data/*.jsonl"))
    done = rung_cli("config", "validate", str(fixed), cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.strip() == f"{fixed}: valid", done.stderr


@pytest.mark.parametrize("section,line,says", [
    # rung-pretrain's files source: a glob that matches nothing
    ("backend: {name: torch, model: tiny}\ntokenizer: {name: byte}\ndata:\n  name: corpus\n  sources:\n"
     "    - {name: files, paths: [\"notes/**/*.md\"]}\ntrainer: {name: pretrain}\n",
     5, "no file matches 'notes/**/*.md'"),
    # rung-rlhf's preference pairs
    ("backend: {name: torch, model: tiny}\ntokenizer: {name: byte}\n"
     "data: {name: preference_jsonl, path: pairs.jsonl}\ntrainer: {name: dpo}\n",
     3, "data.path: 'pairs.jsonl' is not a file (it does not exist)"),
    # hf: a path that cannot be a hub id, and a hub id offline that is not in the cache
    ("backend: {name: hf, model: ./models/mine}\n", 1, "backend.model: './models/mine' is not a model directory"),
    ("backend: {name: hf, model: org/not-downloaded}\n", 1,
     "backend.model: model 'org/not-downloaded' is not in the local cache and the hub cannot be reached "
     "(HF_HUB_OFFLINE is set)"),
    ("backend: {name: hf, model: ./models, tokenizer: ~/no-such-tokenizer}\n", 1,
     "backend.tokenizer: '~/no-such-tokenizer' is not a tokenizer directory (it does not exist)"),
])
def test_each_plugin_checks_its_paths_at_validation(tmp_path, section, line, says):
    (tmp_path / "models").mkdir()
    config = write_config(tmp_path, section)
    proc = rung_cli("config", "validate", str(config), cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert f"{config}:{line}:" in proc.stderr and says in proc.stderr, proc.stderr


def test_a_missing_model_stops_rung_run_before_any_data_is_prepared(tmp_path):
    """`rung run` on a pretraining config whose model is missing: refused before the corpus
    is read or a tokenizer trained (no work folder, no shards, no run folder)."""
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.md").write_text("some text to prepare " * 50)
    config = write_config(tmp_path, """\
output_dir: out
backend: {name: torch, model: runs/missing/model}
tokenizer: {name: bpe, vocab_size: 300}
data:
  name: corpus
  sources: [{name: files, paths: [notes]}]
trainer: {name: pretrain, steps: 1}
""")
    proc = rung_cli("run", str(config), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert f"{config}:2: backend.model: 'runs/missing/model' is not a checkpoint directory" in proc.stderr
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------- a huge message, cut


def tokenizers(tmp_path):
    import rung
    from transformers import AutoTokenizer

    from rung.transformers_tokenizer import as_rung_tokenizer

    byte = rung.tokenizer("byte")
    byte.chat_template = "rung"
    bpe = rung.tokenizer("bpe", vocab_size=320, chat_template="rung")
    bpe.train(["the quick brown fox jumps over the lazy dog, déjà vu " * 40])
    byte.save(tmp_path / "hf")
    return {"byte": byte, "bpe": bpe, "hf": as_rung_tokenizer(AutoTokenizer.from_pretrained(str(tmp_path / "hf")))}


def long_text(characters: int) -> str:
    words = "the quick brown fox jumps over the lazy dog, déjà vu 12345 "
    return (words * (characters // len(words) + 1))[:characters]


@pytest.mark.parametrize("truncation", ["right", "left", "drop"])
def test_a_cut_message_gives_the_tokens_full_tokenization_gives(tmp_path, truncation):
    from rung.records import ChatExample, Message
    from rung_lora.cutting import cut_long_messages
    from rung_lora.data import encode_chat, prepare_rows
    from rung_lora.templates import make_renderer

    max_length = 160  # the chatml prompt is ~90 byte tokens; the row must reach the answer
    long = long_text(40_000)  # full tokenization is affordable here
    example = ChatExample((Message("system", "Be brief."), Message("user", "Go on."), Message("assistant", long),
                           Message("user", long[:20_000]), Message("assistant", long[::-1])))
    for name, tokenizer in tokenizers(tmp_path).items():
        renderer = make_renderer("chatml", tokenizer)
        cut = cut_long_messages(example, tokenizer, max_length, truncation)
        assert max(len(m.content) for m in cut.messages) < 20_000, name  # it was cut ...
        prepared = prepare_rows([example], renderer, tokenizer, max_length=max_length, truncation=truncation)
        full = encode_chat(example, renderer, tokenizer)  # ... and the row is what the whole text gives
        ids, labels = full.ids, full.labels()
        if truncation == "drop":
            assert prepared.rows == [] and prepared.dropped == 1, name
            continue
        keep = slice(None, max_length) if truncation == "right" else slice(-max_length, None)
        assert prepared.rows == [(ids[keep], labels[keep])], (name, truncation)
        assert prepared.truncated == 1
    short = ChatExample((Message("user", "hi"), Message("assistant", "hello")))
    assert cut_long_messages(short, tokenizer, max_length) is short


MEASURE = """
import json, resource, sys
import rung
from rung_lora.data import ChatJsonl, prepare_rows
from rung_lora.options import ChatJsonlOptions
from rung_lora.templates import make_renderer
tokenizer = rung.tokenizer("byte")
tokenizer.chat_template = "rung"
renderer = make_renderer("chatml", tokenizer)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
examples = list(ChatJsonl(ChatJsonlOptions(path=sys.argv[1])).read())
prepared = prepare_rows(examples, renderer, tokenizer, max_length=512)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"growth_kb": after - before, "rows": [len(ids) for ids, _ in prepared.rows],
                  "truncated": prepared.truncated}))
"""


def test_a_10_mb_message_is_cut_in_bounded_memory(tmp_path):
    """One 10 MB chat line, formatted to max_length 512 in a fresh process: its peak memory
    grows by less than 10 times the line (it grew by ~1.9 GB, 180x, before the cut)."""
    path = tmp_path / "chat.jsonl"
    record = {"messages": [{"role": "user", "content": "Tell me everything."},
                           {"role": "assistant", "content": long_text(10_000_000)}]}
    path.write_text(json.dumps(record) + "\n", encoding="utf-8")
    size = path.stat().st_size
    proc = subprocess.run([sys.executable, "-c", MEASURE, str(path)], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert proc.returncode == 0, proc.stderr
    measured = json.loads(proc.stdout.strip().splitlines()[-1])
    assert measured["rows"] == [512] and measured["truncated"] == 1
    assert measured["growth_kb"] * 1024 < 10 * size, (measured, size)


# ---------------------------------------------------------------------- resume: each step once


def start_and_kill_in_save(out: Path, marker: Path, step: int) -> None:
    """engine_train.py (a real TorchEngine run with rung's Run and JSONL sink), SIGKILLed while
    it writes the checkpoint of `step` (the one before it is complete)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ENGINE_TEST_HANG_IN_SAVE": str(step),
           "ENGINE_TEST_MARKER": str(marker)}
    proc = subprocess.Popen([sys.executable, str(ENGINE_TRAIN), str(out), "--steps", "8", "--save-every", "2"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not marker.exists():
            assert proc.poll() is None, "training ended before the kill"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def uninterrupted(out: Path) -> None:
    """The same training as engine_train.py, in this process (one thread: the suite's fixture)."""
    sys.path.insert(0, str(ENGINE_TRAIN.parent))
    import engine_support as sup
    from rung_torch.engine import TorchEngine

    engine = TorchEngine(sup.make_model(0), sup.backend_options(precision="fp32"))
    run = sup.make_run(out)
    try:
        engine.fit(sup.objective, sup.CountingTokens(8), sup.training_options(steps=8, batch_size=8, save_every=2), run)
    finally:
        run.close()


def steps_in(path: Path) -> list[int]:
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()]


def test_a_resumed_runs_metrics_hold_each_step_once(tmp_path):
    out, marker = tmp_path / "killed", tmp_path / "marker"
    metrics = out / "metrics.jsonl"
    start_and_kill_in_save(out, marker, step=6)
    assert steps_in(metrics) == [1, 2, 3, 4, 5, 6]  # 5 and 6 were logged after checkpoint 4
    with metrics.open("a") as handle:
        handle.write('{"step": 7, "loss": 1.')  # a kill in the middle of a write leaves half a line

    env = {k: v for k, v in os.environ.items() if not k.startswith("ENGINE_TEST_")}
    resumed = subprocess.run([sys.executable, str(ENGINE_TRAIN), str(out), "--steps", "8", "--save-every", "2"],
                             env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "(step 4)" in resumed.stderr  # it resumed from checkpoint 4
    straight = tmp_path / "straight"
    uninterrupted(straight)

    # The file itself, read as plain JSON lines: each step once, in order, as the uninterrupted run.
    assert steps_in(metrics) == steps_in(straight / "metrics.jsonl") == list(range(1, 9))
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    expected = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    for got, want in zip(records, expected):
        for key in ("loss", "lr", "grad_norm", "tokens"):
            assert got[key] == want[key], (got["step"], key)
    assert not list(out.glob(".metrics.jsonl.*"))  # the rewrite left no temporary file


def test_a_resume_keeps_what_it_does_not_log_again(tmp_path):
    """The rewrite at a resume from step N keeps earlier records up to N that the resumed
    attempt does not log again, and replaces those it does (a trainer's step-0 summary)."""
    from rung.builtin.sinks import JsonlSink, JsonlSinkOptions

    first = JsonlSink(JsonlSinkOptions(), run_dir=tmp_path)
    for step, metrics in [(0, {"train_examples": 10.0}), (0, {"eval_loss": 3.0}), (2, {"loss": 2.0}),
                          (4, {"loss": 1.5}), (5, {"loss": 1.4})]:
        first.log(step, metrics)
    first.close()
    again = JsonlSink(JsonlSinkOptions(), run_dir=tmp_path)
    again.log(0, {"train_examples": 11.0})  # logged again before the loop resumes
    again.resumed(4)
    again.log(5, {"loss": 1.3})
    again.close()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records == [{"step": 0, "eval_loss": 3.0}, {"step": 0, "train_examples": 11.0},
                       {"step": 2, "loss": 2.0}, {"step": 4, "loss": 1.5}, {"step": 5, "loss": 1.3}]


def test_a_fresh_start_in_a_used_folder_keeps_only_its_own_metrics(tmp_path):
    """`resume: never` (or a folder whose checkpoints are gone) starts afresh: the metrics.jsonl
    an earlier run left there is superseded, not continued, so the file (and its plot) holds
    one run's steps."""
    sys.path.insert(0, str(ENGINE_TRAIN.parent))
    import engine_support as sup
    from rung_torch.engine import TorchEngine

    out = tmp_path / "run"
    uninterrupted(out)
    assert steps_in(out / "metrics.jsonl") == list(range(1, 9))
    engine = TorchEngine(sup.make_model(1), sup.backend_options(precision="fp32"))
    run = sup.make_run(out)
    try:
        engine.fit(sup.objective, sup.CountingTokens(8),
                   sup.training_options(steps=3, batch_size=8, save_every=2, resume="never"), run)
    finally:
        run.close()
    assert steps_in(out / "metrics.jsonl") == [1, 2, 3]

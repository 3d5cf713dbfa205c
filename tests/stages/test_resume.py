"""A staged run killed while a trainer runs (SIGKILL, no clean-up) resumes on the next run:
the stage is recorded as started, not finished, and its trainer continues from its checkpoint;
its recorded time is that of both attempts."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.stages.conftest import records, rung, rung_env, write_workspace

LONG_SFT = """\
output_dir: out
backend: {name: torch, model: test, device: cpu, precision: fp32}
tokenizer: {name: byte}
stages:
  - name: sft
    data: {name: chat_jsonl, path: chat/train.jsonl}
    trainer: {name: sft, steps: 80, batch_size: 4, log_every: 10, save_every: 10, warmup_steps: 0}
  - name: eval
    backend: {model: {from: sft}}
    tasks: [{kind: perplexity, name: heldout, paths: [corpus/doc00.txt]}]
"""


def test_a_stage_killed_mid_run_resumes_from_its_checkpoint(tmp_path: Path):
    pytest.importorskip("torch")
    write_workspace(tmp_path, LONG_SFT)
    launched = time.time()
    process = subprocess.Popen([sys.executable, "-m", "rung.cli.main", "run", "ladder.yaml"], cwd=tmp_path,
                               env=rung_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = tmp_path / "out/sft/checkpoints/latest"
    try:
        deadline = time.monotonic() + 300  # a guard against a hang, not a measure of speed
        while not latest.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert latest.exists(), "no checkpoint was written"
        process.send_signal(signal.SIGKILL)
        killed = time.time()
    finally:
        process.kill()
        process.wait()
    entry = records(tmp_path)["sft"]
    assert entry["status"] == "running" and "eval" not in records(tmp_path)
    logged = [json.loads(line)["step"] for line in (tmp_path / "out/sft/metrics.jsonl").read_text().splitlines()]
    killed_at = max(logged)
    assert killed_at < 80, "the trainer finished before it was killed: nothing to resume"
    began = entry["began"]
    assert launched <= began <= killed
    last_write = max(p.stat().st_mtime for p in (tmp_path / "out/sft").rglob("*") if p.is_file())

    done = rung(tmp_path, "run", "ladder.yaml")
    log = done.stdout + done.stderr
    assert "stage 1/2: sft (trainer sft), resuming" in log
    assert "resuming from" in log and "out/sft/checkpoints/step-" in log
    entries = records(tmp_path)
    assert entries["sft"]["status"] == entries["eval"]["status"] == "done"
    steps = [json.loads(line)["step"] for line in (tmp_path / "out/sft/metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 80
    assert "resumed" in log.split("2 stages")[-1]  # the table says the stage resumed
    # its time: the killed attempt (its start to the last file it wrote) plus the resumed one
    killed_attempt, resumed_attempt = entries["sft"]["attempts"]
    assert killed_attempt == pytest.approx(last_write - began, abs=0.01)
    assert 0 < killed_attempt <= killed - launched and resumed_attempt > 0
    assert entries["sft"]["seconds"] == pytest.approx(killed_attempt + resumed_attempt, abs=0.01)
    assert entries["eval"]["attempts"] == [entries["eval"]["seconds"]]  # a stage run once: one attempt

"""`rung serve` as a user runs it: the installed `rung` in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

from tests.serve.serving import free_port, wait_for

RUNG = str(Path(sys.executable).with_name("rung"))
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
       "RUNG_LOAD_PLUGINS": "rung-torch,rung-tokenizers,rung-serve"}


def test_serve_help_lists_its_options():
    proc = subprocess.run([RUNG, "serve", "--help"], capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for option in ("--backend", "--model", "--option", "--host", "--port", "--api-key", "--name"):
        assert option in proc.stdout
    assert "127.0.0.1" in proc.stdout
    listed = subprocess.run([RUNG, "--help"], capture_output=True, text=True, env=ENV, timeout=120)
    assert "serve" in listed.stdout


def test_serve_starts_a_torch_model_and_answers(tmp_path):
    port, key = free_port(), "cli-secret-789"
    args = [RUNG, "serve", "-b", "torch", "-m", "test", "--tokenizer", "byte", "-o", "device=cpu",
            "--name", "tiny", "--port", str(port), "--log-level", "warning"]
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env={**ENV, "RUNG_SERVE_API_KEY": key})
    try:
        wait_for(f"http://127.0.0.1:{port}/health", attempts=600)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/chat/completions", method="POST",
            data=json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
                             "max_tokens": 3}).encode(),
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
        with urllib.request.urlopen(request) as reply:
            body = json.loads(reply.read())
        assert body["model"] == "tiny" and body["usage"]["completion_tokens"] >= 1
    finally:
        proc.terminate()
        proc.wait(timeout=120)
    text = log.read_text()
    assert f"rung serve: model 'tiny' (torch) at http://127.0.0.1:{port}/v1 (API key required)" in text
    assert key not in text


def test_serve_refuses_bad_input_in_one_line():
    proc = subprocess.run([RUNG, "serve", "-b", "torch", "-m", "test", "-o", "device=cpu"],
                          capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode != 0 and proc.stderr.startswith("rung: error: ") and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1

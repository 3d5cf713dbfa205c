"""`rung prompt`, `rung eval` and `rung serve` on the llamacpp backend, as a user runs them: subprocesses of the
installed `rung`, their answers and scores checked against rung-torch on the same folder."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

from rung.records import GenerationRequest, Message
from tests.llamacpp.conftest import LINES

RUNG = str(Path(sys.executable).with_name("rung"))


def rung_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    environment.pop("RUNG_DEBUG", None)
    return subprocess.run([RUNG, *args], capture_output=True, text=True, cwd=cwd, env=environment, timeout=300)


def test_rung_prompt_answers_as_rung_torch(model_dir, torch_backend, tmp_path):
    proc = rung_cli("prompt", "-b", "llamacpp", "-m", str(model_dir), "--no-log", "--temperature", "0",
                    "--max-tokens", "16", "the king rode to", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    chat = GenerationRequest(messages=(Message("user", "the king rode to"),), max_tokens=16, temperature=0.0)
    assert proc.stdout.rstrip("\n") == torch_backend.generate(chat).text.rstrip("\n")
    raw = rung_cli("prompt", "-b", "llamacpp", "-m", str(model_dir), "--no-log", "--raw", "--temperature", "0",
                   "--max-tokens", "16", "-o", "threads=2", "the cat", cwd=tmp_path)
    assert raw.returncode == 0, raw.stderr
    plain = GenerationRequest(prompt="the cat", max_tokens=16, temperature=0.0)
    assert raw.stdout.rstrip("\n") == torch_backend.generate(plain).text.rstrip("\n")


def test_rung_prompt_on_a_file_that_is_not_gguf_is_one_line(tmp_path):
    (tmp_path / "weights.gguf").write_text("hello", encoding="utf-8")
    proc = rung_cli("prompt", "-b", "llamacpp", "-m", "weights.gguf", "--no-log", "hi", cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "is not a GGUF file" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_rung_eval_scores_through_echo_as_rung_torch_does(model_dir, tmp_path):
    # Shorter than the model's context: one window, the same for both (echo scoring's windows
    # are one token shorter than the objective's, so a longer text is cut differently).
    (tmp_path / "held.txt").write_text("\n".join(LINES[:3]), encoding="utf-8")
    (tmp_path / "ppl.yaml").write_text("kind: perplexity\nname: held\npaths: held.txt\n", encoding="utf-8")
    results = {}
    for backend, options in (("llamacpp", []), ("torch", ["-o", "precision=fp32"])):  # not bf16 where auto is
        proc = rung_cli("eval", "-b", backend, "-m", str(model_dir), *options, "ppl.yaml", "--json", "-", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        results[backend] = json.loads(proc.stdout)
    ours, theirs = (json.dumps(results[b], sort_keys=True) for b in ("llamacpp", "torch"))
    numbers = [_numbers(results[b]) for b in ("llamacpp", "torch")]
    assert 20 < results["llamacpp"]["results"]["held"][str(model_dir)]["tokens"] < 90, ours
    assert numbers[0] and len(numbers[0]) == len(numbers[1]), (ours, theirs)
    for a, b in zip(*numbers):
        assert math.isclose(a, b, rel_tol=1e-3, abs_tol=1e-3), (ours, theirs)  # f32 sums in another order


def _numbers(value) -> list[float]:
    """Every number in a JSON value, in order (keys sorted), leaving out names and timings."""
    if isinstance(value, dict):
        return [n for key in sorted(value) if "second" not in key and "time" not in key
                for n in _numbers(value[key])]
    if isinstance(value, list):
        return [n for item in value for n in _numbers(item)]
    return [float(value)] if isinstance(value, (int, float)) and not isinstance(value, bool) else []


def test_rung_serve_answers_chat_and_completions_as_rung_torch(model_dir, torch_backend, tmp_path):
    from tests.serve.serving import free_port, wait_for

    port = free_port()
    log = tmp_path / "serve.log"
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as out:
        proc = subprocess.Popen([RUNG, "serve", "-b", "llamacpp", "-m", str(model_dir), "--name", "tiny",
                                 "--port", str(port), "--log-level", "warning"],
                                stdout=out, stderr=subprocess.STDOUT, env=environment)
    try:
        wait_for(f"http://127.0.0.1:{port}/health", attempts=600)
        chat = _post(port, "/v1/chat/completions", {"model": "tiny", "max_tokens": 12, "temperature": 0,
                                                    "messages": [{"role": "user", "content": "the queen"}]})
        completion = _post(port, "/v1/completions", {"model": "tiny", "prompt": "birds sang", "max_tokens": 8,
                                                     "temperature": 0, "logprobs": 2})
    finally:
        proc.terminate()
        proc.wait(timeout=120)
    expected = torch_backend.generate(GenerationRequest(messages=(Message("user", "the queen"),), max_tokens=12,
                                                        temperature=0.0))
    assert chat["choices"][0]["message"]["content"] == expected.text, log.read_text()
    assert chat["usage"]["prompt_tokens"] == expected.usage.prompt_tokens
    plain = torch_backend.generate(GenerationRequest(prompt="birds sang", max_tokens=8, temperature=0.0, logprobs=2))
    assert completion["choices"][0]["text"] == plain.text
    served = completion["choices"][0]["logprobs"]["token_logprobs"]
    assert len(served) == len(plain.logprobs)
    assert all(math.isclose(a, b.logprob, abs_tol=1e-3) for a, b in zip(served, plain.logprobs))
    assert "rung serve: model 'tiny' (llamacpp)" in log.read_text()


def _post(port: int, path: str, body: dict) -> dict:
    import urllib.request

    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method="POST", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as reply:
        return json.loads(reply.read())

"""Every benchmark runs in CI, in its seconds-long smoke mode (`--smoke`, benchmarks/smoke.py).

The figures of a smoke run mean nothing; what is checked is that the script still runs end
to end against today's code and prints the ratio it exists to report. A benchmark added
without an entry here fails `test_every_benchmark_is_smoke_tested`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"

# The line each benchmark prints its ratio on (re.M: ^ and $ are line ends).
RATIO_LINES = {
    "api_overhead": r"^openai request latency .* \d+\.\d{3}x$",
    "compare_concurrency": r"^rung compare / one-by-one SDK: wall \d+\.\d{3}x",
    "decode_vs_llamacpp": r"^rung-torch / llama\.cpp completion: (\d+\.\d\dx tokens/s|skipped \(no llama-cpp-python\))",
    "demo_budget": r"^candidate \S+ / current: bits per byte \d+\.\d{3}x",
    "dpo_vs_trl": r"^rung-torch/trl: steps/s \d+\.\d\dx \(goal >= 1\.5x\)",
    "eval_vs_harness": r"^rung/harness-hf, both fp32: tokens/s \d+\.\d\dx \(goal >= 1\.5x\)",
    "gpu_figures": r"^gpu_figures: training [\d,]+ tokens/s, MFU (\d+\.\d%|n/a) of the datasheet peak, \d+\.\d% of "
                   r"the measured matmul; decode [\d,]+\.\d tokens/s, \d+\.\d% of the memory-bandwidth roofline$",
    "grpo_vs_trl": r"^rung-torch/trl: steps/s \d+\.\d\dx \(goal >= 2x\)",
    "hf_generate": r"^ratio rung / direct\s+: \d+\.\d{3}x median",
    "hf_serve_batching": r"^ratio hf decode_slots / one at a time, \d+ clients: requests/s \d+\.\d\dx median",
    "jax_train": r"^jax / torch, each at its default precision \(auto\): \d+\.\d\dx",
    "lora_train": r"^ratio rung/plain: \d+\.\d\dx",
    "prepare_stdlib": r"^full\s.*\s\d+\.\d\d$",  # the last column: wall time / the encode baseline's
    "serve_vs_transformers": r"^1 client: rung serve / rung generate, p50 latency: \d+\.\d\dx",
    "startup": r"^rung --help\s*: wall .*\(wall \d+\.\d\dx the 0\.2 s goal",
    "torch_decode": r"^ratio rung / transformers: \d+\.\d\dx wall clock",
    "torch_train": r"^  engine / plain\s+\d+\.\d\dx wall median",
}


def test_every_benchmark_is_smoke_tested():
    scripts = {p.stem for p in BENCHMARKS.glob("*.py")} - {"smoke"}
    assert scripts == set(RATIO_LINES)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(RATIO_LINES))
def test_benchmark_runs_in_smoke_mode(name, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    env.pop("RUNG_BENCH_SMOKE", None)  # the flag alone must be enough
    done = subprocess.run([sys.executable, str(BENCHMARKS / f"{name}.py"), "--smoke"],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    tail = f"{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    assert done.returncode == 0, f"{name} --smoke exited {done.returncode}:\n{tail}"
    assert re.search(RATIO_LINES[name], done.stdout, re.M), f"{name} printed no ratio line:\n{done.stdout[-3000:]}"


def test_smoke_mode_from_the_environment_and_explicit_sizes_win(tmp_path):
    script = str(BENCHMARKS / "startup.py")
    env = {**os.environ, "RUNG_BENCH_SMOKE": "1"}
    smoke = subprocess.run([sys.executable, script], capture_output=True, text=True, env=env, check=True)
    assert "median of 1 " in smoke.stdout  # startup's smoke size: one run of each command
    given = subprocess.run([sys.executable, script, "--runs", "2"], capture_output=True, text=True, env=env, check=True)
    assert "median of 2 " in given.stdout

"""scripts/gpu-check.sh --smoke: what the GPU run does, in CI on a CPU: the cuda-marked tests on
the CPU, gpu_figures.py --smoke, every other benchmark's GPU command line checked against its
--help, a summary table in $OUT. Not marked `cuda`: the script runs those itself."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu-check.sh"
BENCHMARKS = ("torch_train", "torch_decode", "lora_train", "dpo_vs_trl", "grpo_vs_trl")


def gpu_check(out: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "OUT": str(out), **env})


@pytest.mark.slow
def test_smoke_mode_runs_the_cuda_tests_and_the_benchmarks_and_writes_the_table(tmp_path):
    done = gpu_check(tmp_path, "--smoke")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    summary = (tmp_path / "summary.md").read_text()
    # On a CPU: torch.compile and the jax-on-GPU tests skip, every other cuda test runs.
    assert re.search(r"^\| cuda tests \(on the CPU\) \| passed \| \d+ \| [5-9] passed, 3 skipped", summary,
                     re.M), summary
    assert re.search(r"^\| gpu_figures --smoke \| passed \| \d+ \| gpu_figures: training [\d,]+ tokens/s, MFU n/a "
                     r"of the datasheet peak, \d+\.\d% of the measured matmul; decode .* roofline \|$",
                     summary, re.M), summary
    for name in BENCHMARKS + ("serve, 32 clients",):
        assert f"| {name} (options) | passed (options checked) |" in summary, summary
    log = (tmp_path / "gpu-check.log").read_text()
    assert "== gpu_figures --smoke" in log and "all passed" in log
    assert "pip install" not in log and "nvidia-smi" not in log  # no GPU asked for, nothing installed


def test_a_budget_spent_skips_each_step_saying_so(tmp_path):
    done = gpu_check(tmp_path, "--smoke", GPU_CHECK_BUDGET_S="5")
    assert done.returncode == 0, done.stdout[-3000:]
    summary = (tmp_path / "summary.md").read_text()
    assert "| cuda tests (on the CPU) | skipped: the 5 s budget was spent | 0 | |" in summary
    assert "| gpu_figures --smoke | skipped: the 5 s budget was spent | 0 | |" in summary
    assert "| torch_train (options) | passed (options checked) |" in summary  # checks cost no budget


def test_an_unknown_argument_is_one_line_and_exit_2(tmp_path):
    done = gpu_check(tmp_path, "--fast")
    assert done.returncode == 2 and done.stderr.strip() == "usage: bash scripts/gpu-check.sh [--smoke | --fetch-wheels]"
    assert not (tmp_path / "summary.md").exists()

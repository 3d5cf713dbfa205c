"""TorchEngine across processes: SIGKILL and resume, and `torchrun` data parallelism on the CPU."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import engine_support as sup  # noqa: E402

from rung_torch.engine import TorchEngine  # noqa: E402
from rung_torch.engine import checkpoint as ckpt  # noqa: E402

SCRIPT = str(HERE / "engine_train.py")


def env(**extra):
    out = dict(os.environ, OMP_NUM_THREADS="1", **{k: str(v) for k, v in extra.items()})
    for key in ("ENGINE_TEST_HANG_IN_SAVE", "ENGINE_TEST_MARKER", "WORLD_SIZE",
                "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        if key not in extra:
            out.pop(key, None)
    return out


def in_process(out: Path, steps: int, global_batch: int = 8, save_every=None):
    """The same training as engine_train.py, in this process, with one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        engine = TorchEngine(sup.make_model(0), sup.backend_options(precision="fp32"))
        run = sup.make_run(out)
        try:
            engine.fit(sup.objective, sup.CountingTokens(global_batch),
                       sup.training_options(steps=steps, batch_size=global_batch, save_every=save_every), run)
        finally:
            run.close()
    finally:
        torch.set_num_threads(threads)
    return sup.read_metrics(out)


def start_and_kill(out: Path, marker: Path, **hang) -> None:
    """Start engine_train.py, wait until it says it is where `hang` stops it, SIGKILL it."""
    proc = subprocess.Popen(
        [sys.executable, SCRIPT, str(out), "--steps", "8", "--save-every", "2"],
        env=env(ENGINE_TEST_MARKER=marker, **hang), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        while not marker.exists():
            if proc.poll() is not None:
                raise AssertionError(f"training ended before the kill:\n{proc.stdout.read().decode()}")
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
    marker.unlink()


def test_sigkill_then_resume_gives_the_losses_of_an_uninterrupted_run(tmp_path):
    straight = in_process(tmp_path / "straight", steps=8, save_every=2)
    out, marker = tmp_path / "killed", tmp_path / "marker"
    root = out / "checkpoints"

    # 1. killed mid-training, after the checkpoint of step 4, in the middle of writing the
    #    checkpoint of step 6 (its tensors written, its state.json not yet)
    start_and_kill(out, marker, ENGINE_TEST_HANG_IN_SAVE=6)
    assert sorted(sup.read_metrics(out)) == [1, 2, 3, 4, 5, 6]
    assert list(root.glob(".tmp-step-00000006-*")), "the kill should leave a half-written temp folder"
    assert (root / "latest").read_text().strip() == "step-00000004"
    assert ckpt.CheckpointDir(root).latest().name == "step-00000004"

    # 2. resumed: from step 4 to the end
    done = subprocess.run([sys.executable, SCRIPT, str(out), "--steps", "8", "--save-every", "2"],
                          env=env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "resuming from" in done.stderr
    assert not list(root.glob(".tmp-*"))
    assert (root / "latest").read_text().strip() == "step-00000008"

    resumed = sup.read_metrics(out)  # the last record of each step
    assert sorted(resumed) == sorted(straight) == list(range(1, 9))
    for step in straight:
        # bit-for-bit: same weights, optimizer moments, schedule, RNG and data position
        for key in ("loss", "lr", "grad_norm", "tokens", "accuracy"):
            assert resumed[step][key] == straight[step][key], (step, key)


def test_torchrun_two_cpu_processes_match_one_process(tmp_path):
    # The same global batch of 8 rows: 1 process x 8 rows vs 2 gloo processes x 4 rows, with
    # DDP and then FSDP2 (one torchrun, both strategies in turn, to start processes once).
    single = in_process(tmp_path / "single", steps=4)
    out = tmp_path / "multi"
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         SCRIPT, str(out), "--steps", "4", "--global-batch", "8", "--resume", "never",
         "--distributed", "ddp,fsdp"],
        env=env(), capture_output=True, text=True,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    from safetensors import safe_open

    reference = sup.make_model(0).state_dict()
    for strategy in ("ddp", "fsdp"):
        multi = sup.read_metrics(out / strategy)
        assert sorted(multi) == [1, 2, 3, 4], strategy
        for step in single:
            # the all-reduce sums gradients in another order than one process does: float noise
            assert multi[step]["loss"] == pytest.approx(single[step]["loss"], rel=1e-5), (strategy, step)
            assert multi[step]["grad_norm"] == pytest.approx(single[step]["grad_norm"], rel=1e-4), (strategy, step)
            assert multi[step]["tokens"] == single[step]["tokens"]
        # rank 0 alone wrote: one final checkpoint, whole (not sharded) tensors, both data positions
        path = out / strategy / "checkpoints/step-00000004"
        state = ckpt.read_state(path)
        assert state["world_size"] == 2 and state["loop"]["data"] == [{"index": 4}, {"index": 4}]
        with safe_open(str(path / "model.safetensors"), "pt") as f:
            assert {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()} == {
                k: tuple(v.shape) for k, v in reference.items()}
        result = (out / strategy / "result.json").read_text()
        assert f'"strategy": "{strategy}"' in result
        assert '"whole_state_dict": true' in result  # engine.state_dict() gathers FSDP shards

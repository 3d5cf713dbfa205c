"""The jax engine across devices and processes: sharded steps equal unsharded ones, a killed
run resumes on the same losses, several JAX processes equal one.

What every engine must do is tested on both in tests/engines/test_engine_contract.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.jax.helpers import ROOT, read_losses, run_script


def test_sharded_step_over_2x2_mesh_equals_single_device(jax_env, tmp_path):
    run_script(jax_env, "sharded", str(tmp_path))
    results = json.loads((tmp_path / "results.json").read_text())
    single, mesh = results["single"], results["mesh"]
    assert "fsdp" in mesh["q_spec"] and "tensor" in mesh["q_spec"]  # the weights really were split
    assert len(single["losses"]) == 3
    # fp32 on the CPU: the mesh only changes the order of reductions
    np.testing.assert_allclose(mesh["losses"], single["losses"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mesh["grad_norms"], single["grad_norms"], rtol=1e-4, atol=1e-6)
    a, b = np.load(tmp_path / "single.npz"), np.load(tmp_path / "mesh.npz")
    assert sorted(a.files) == sorted(b.files)
    for name in a.files:
        np.testing.assert_allclose(b[name], a[name], rtol=1e-4, atol=1e-5, err_msg=name)
    assert single["losses"][-1] < single["losses"][0]


def test_run_killed_and_resumed_gives_the_same_losses(jax_env, tmp_path):
    steps, save_every, accum = 6, 2, 2
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    run_script(jax_env, "train", str(whole), "--steps", str(steps), "--save-every", str(save_every))

    # The stream blocks when step 4 asks for its batches: step 3 is logged after the step-2
    # checkpoint was written, and the step-4 checkpoint never is. Then SIGKILL.
    proc = subprocess.Popen([sys.executable, "-m", "tests.jax.scripts", "train", str(killed), "--steps",
                             str(steps), "--save-every", str(save_every), "--hang-at", str(3 * accum)],
                            env=jax_env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while not (killed / "losses.jsonl").is_file() or len(read_losses(killed)) < 3:
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            time.sleep(0.2)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert (killed / "checkpoints" / "2").is_dir()
    assert not (killed / "checkpoints" / "4").exists()

    run_script(jax_env, "train", str(killed), "--steps", str(steps), "--save-every", str(save_every))
    expected, got = read_losses(whole), read_losses(killed)
    assert sorted(expected) == list(range(1, steps + 1))
    assert sorted(got) == list(range(1, steps + 1))
    for step in range(1, steps + 1):
        assert got[step] == expected[step], (step, got[step], expected[step])
    # ... and ends on the same weights
    whole_w, resumed_w = np.load(whole / "final.npz"), np.load(killed / "final.npz")
    for key in whole_w.files:
        np.testing.assert_array_equal(resumed_w[key], whole_w[key], err_msg=key)


@pytest.mark.skipif(not os.environ.get("RUNG_TEST_MULTIHOST"), reason="set RUNG_TEST_MULTIHOST=1 (two JAX processes)")
def test_two_processes_with_jax_distributed_equal_one_process(jax_env, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**jax_env, "XLA_FLAGS": jax_env["XLA_FLAGS"].replace("device_count=4", "device_count=2")}
    procs = [subprocess.Popen([sys.executable, "-m", "tests.jax.scripts", "multihost", str(tmp_path / "multi"),
                               "--process-id", str(i), "--processes", "2", "--port", str(port)],
                              env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for i in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err.decode()[-3000:]
    run_script(jax_env, "concatenated", str(tmp_path / "single"), "--processes", "2")
    multi = json.loads((tmp_path / "multi" / "losses.json").read_text())
    single = json.loads((tmp_path / "single" / "losses.json").read_text())
    np.testing.assert_allclose(multi, single, rtol=1e-5)
    assert (tmp_path / "multi" / "checkpoints" / "2").is_dir()

"""FSDP2 through the engine on one device, in a real torchrun process (nccl on a GPU, gloo on a CPU):
sharded training equals unsharded training, and the gathered weights are whole."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.gpu.helpers import falling

pytestmark = pytest.mark.cuda

SCRIPT = Path(__file__).resolve().parent / "fsdp_train.py"


def test_fsdp2_on_one_device_trains_as_unsharded(device, tmp_path):
    from safetensors.numpy import load_file

    # bf16 shards gather in bf16 (FSDP2's MixedPrecisionPolicy), which the engine sets on CUDA only.
    precisions = ["fp32", "bf16"] if device.type == "cuda" else ["fp32"]
    env = {key: value for key, value in os.environ.items()
           if key not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", str(SCRIPT),
         str(tmp_path), "--device", device.type, "--precisions", ",".join(precisions), "--steps", "6"],
        env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())

    for precision in precisions:
        plain, sharded = results[precision]["none"], results[precision]["fsdp"]
        assert sharded["sharded"] and not plain["sharded"]  # FSDP2 made every parameter a DTensor
        assert sharded["engine_precision"] == precision
        assert len(sharded["losses"]) == 6 and falling(sharded["losses"]), sharded["losses"]
        # fp32: one shard is the whole tensor, only float noise apart. bf16: FSDP2 casts the
        # gathered weights (norms too) to bf16 where autocast casts only matmul inputs.
        rel = 1e-4 if precision == "fp32" else 5e-2
        assert sharded["losses"] == pytest.approx(plain["losses"], rel=rel), precision
        assert sharded["grad_norms"] == pytest.approx(plain["grad_norms"], rel=rel * 10), precision
        whole, reference = (load_file(str(tmp_path / f"{precision}-{s}.safetensors")) for s in ("fsdp", "none"))
        assert {k: v.shape for k, v in whole.items()} == {k: v.shape for k, v in reference.items()}
        if precision == "fp32":
            for name, value in reference.items():
                np.testing.assert_allclose(whole[name], value, rtol=1e-4, atol=1e-5, err_msg=name)

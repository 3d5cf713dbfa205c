"""Train the tiny model with the engine, unsharded and then FSDP2-sharded, in one torchrun process.

    python -m torch.distributed.run --standalone --nproc_per_node 1 fsdp_train.py OUT \
        --device cuda --precisions fp32,bf16 --steps 6

Writes OUT/results.json ({precision: {strategy: losses, grad norms, sharded}}) and each run's
final weights as OUT/<precision>-<strategy>.safetensors (rank 0). nccl on CUDA, gloo on a CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: tests.gpu.helpers

from tests.gpu.helpers import RecordingRun, StrideTokens, next_token_loss, tiny_model, torch_options  # noqa: E402
from tests.gpu.helpers import training_options  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precisions", default="fp32")
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()

    import torch
    import torch.distributed as dist
    from safetensors.torch import save_file

    from rung_torch.device import resolve_device
    from rung_torch.engine import TorchEngine

    device = resolve_device(args.device)
    # A world of one process: the engine joins no process group and shards nothing
    # (rung_torch.engine.distributed: init and strategy). This script joins the group itself and
    # asks the engine for FSDP2 directly, so FSDP2's code runs on the one GPU a machine may have.
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    out = Path(args.out)
    results: dict[str, dict] = {}
    try:
        for precision in args.precisions.split(","):
            results[precision] = {}
            for strategy in ("none", "fsdp"):
                model = tiny_model(0)
                engine = TorchEngine(model, torch_options(device, precision=precision))
                engine.strategy = strategy
                run = RecordingRun(out / f"{precision}-{strategy}")
                engine.fit(next_token_loss, StrideTokens(), training_options(steps=args.steps, grad_accum_steps=2), run)
                state = engine.state_dict()  # FSDP: gathers the shards into whole tensors
                if dist.get_rank() == 0:
                    save_file({k: v.detach().cpu().clone() for k, v in state.items()},  # tied: one copy each
                              str(out / f"{precision}-{strategy}.safetensors"))
                results[precision][strategy] = {
                    "losses": run.series("loss"), "grad_norms": run.series("grad_norm"),
                    "sharded": all(hasattr(p, "full_tensor") for p in model.parameters()),
                    "engine_precision": engine.precision,
                }
        (out / "results.json").write_text(json.dumps(results))
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()

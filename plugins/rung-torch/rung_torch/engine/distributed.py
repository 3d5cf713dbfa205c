"""Data parallelism through `torchrun`: DDP by default, FSDP2 for models that do not fit.

`torchrun --nproc_per_node N ...` sets WORLD_SIZE, RANK and LOCAL_RANK; with WORLD_SIZE > 1
the engine joins the process group (nccl on CUDA, gloo on CPU). rung builds no distribution
layer of its own.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from rung.errors import ConfigError


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def init(device: torch.device) -> tuple[int, int]:
    """Join the torchrun process group when there is one; returns (rank, world_size)."""
    if env_world_size() <= 1 or not dist.is_available():
        return 0, 1
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size()


def strategy(requested: str | None, world_size: int) -> str:
    """"none", "ddp" or "fsdp"; "auto" is DDP when there are several processes."""
    name = (requested or "auto").lower()
    if name not in ("auto", "none", "ddp", "fsdp"):
        raise ConfigError(f"backend.distributed: '{requested}' is not one of auto, ddp, fsdp, none")
    if world_size <= 1:
        return "none"
    if name == "none":
        raise ConfigError("backend.distributed: 'none' under torchrun with several processes; use ddp or fsdp")
    return "ddp" if name == "auto" else name


def transformer_layers(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks (`model.layers` of a Llama-style model, also inside peft wrappers)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and name.split(".")[-1] in ("layers", "h", "blocks"):
            return list(module)
    return []


def wrap(model: nn.Module, kind: str, device: torch.device, precision: str = "fp32") -> nn.Module:
    """The module the training step calls: `model` itself, a DDP wrapper, or FSDP2-sharded."""
    if kind == "none":
        return model
    if kind == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)
    # FSDP2: shard each block, then the root; the same module object, its parameters DTensors.
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    broadcast_parameters(model)  # every rank must shard the same initial weights
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    kwargs: dict[str, Any] = {}
    if device.type == "cuda" and precision in ("bf16", "fp16"):
        # Gather bf16 weights (half the traffic of fp32 + autocast), reduce gradients in fp32.
        from torch.distributed.fsdp import MixedPrecisionPolicy

        low = torch.bfloat16 if precision == "bf16" else torch.float16
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=low, reduce_dtype=torch.float32)
    for layer in transformer_layers(model):
        fully_shard(layer, mesh=mesh, **kwargs)
    fully_shard(model, mesh=mesh, **kwargs)
    return model


@torch.no_grad()
def broadcast_parameters(model: nn.Module) -> None:
    for tensor in list(model.parameters()) + list(model.buffers()):
        dist.broadcast(tensor.data, src=0)


def all_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum a small tensor over processes (a no-op alone)."""
    if is_distributed():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def all_gather_json(value: Any) -> list[Any]:
    """Every rank's `value` (a JSON-able object), in rank order; [value] alone."""
    if not is_distributed():
        return [value]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast_json(value: Any) -> Any:
    """Rank 0's `value` on every rank."""
    if not is_distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]

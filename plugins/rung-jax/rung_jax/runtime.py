"""Devices, meshes, shardings, precision and peak FLOPs: the JAX side of "where it runs"."""

from __future__ import annotations

import os
import resource
import sys
import time
from functools import lru_cache
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from rung.hardware import cpu_has_fast_bf16
from rung.errors import ConfigError, RungError

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # the batch is split over both: fsdp is data parallel too

_initialized = False


def initialize_distributed(options: Any) -> None:
    """`jax.distributed.initialize` once per process, when the options ask for it."""
    global _initialized
    if _initialized or options is None or not options.wanted:
        return
    kwargs = {k: v for k, v in dict(coordinator_address=options.coordinator_address,
                                    num_processes=options.num_processes,
                                    process_id=options.process_id).items() if v is not None}
    try:
        jax.distributed.initialize(**kwargs)
    except Exception as exc:  # noqa: BLE001 - say what failed in one line
        raise RungError(f"backend.distributed: jax.distributed.initialize({kwargs}) failed: {exc}") from exc
    _initialized = True


def select_devices(device: str = "auto") -> list[jax.Device]:
    """The devices to build the mesh on: all of the default platform, or a named platform."""
    if device in (None, "auto"):
        return jax.devices()
    platform = device.split(":")[0].replace("cuda", "gpu")
    try:
        devices = jax.devices(platform)
    except RuntimeError:
        raise ConfigError(f"backend.device: JAX has no '{device}' devices "
                          f"(it sees {jax.default_backend()})") from None
    if ":" in device:
        index = int(device.split(":")[1])
        return [devices[index]]
    return devices


def make_mesh(mesh_options: Any = None, devices: list[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh over `devices`; one axis may be -1 for 'the rest'."""
    devices = devices if devices is not None else jax.devices()
    n = len(devices)
    sizes = [getattr(mesh_options, a, 1) if mesh_options is not None else (-1 if a == "data" else 1)
             for a in AXES]
    if sizes.count(-1) > 1:
        raise ConfigError("backend.mesh: at most one axis may be -1")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if n % known:
            raise ConfigError(f"backend.mesh: {dict(zip(AXES, sizes))} does not divide {n} devices")
        sizes[sizes.index(-1)] = n // known
    if int(np.prod(sizes)) != n:
        raise ConfigError(f"backend.mesh: {dict(zip(AXES, sizes))} needs {int(np.prod(sizes))} "
                          f"devices, there are {n}")
    if any(s < 1 for s in sizes):
        raise ConfigError(f"backend.mesh: sizes must be >= 1 or -1, got {dict(zip(AXES, sizes))}")
    return jax.make_mesh(tuple(sizes), AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


# -- parameter shardings: Megatron-style tensor parallel plus FSDP over the other dimension

_COLUMN = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "lm_head")  # [in, out]: split out
_ROW = ("o_proj", "down_proj")  # [in, out]: split in


def param_spec(path: tuple[Any, ...], shape: tuple[int, ...], mesh: Mesh) -> P:
    """The PartitionSpec of one parameter, by its name; an axis that does not divide is dropped."""
    names = [str(p) for p in path]
    leaf = names[-1]
    if leaf == "kernel" and len(shape) == 2:
        module = names[-2]
        spec = ("tensor", "fsdp") if module in _ROW else ("fsdp", "tensor")
    elif leaf == "embedding" and len(shape) == 2:
        spec = ("tensor", "fsdp")
    else:
        spec = (None,) * len(shape)  # norms, LoRA factors: small, replicated
    fitted = tuple(a if a is None or shape[i] % mesh.shape[a] == 0 else None for i, a in enumerate(spec))
    return P(*fitted)


def shard_state(state: Any, mesh: Mesh) -> Any:
    """device_put every leaf of an nnx.State with its NamedSharding."""
    from flax import nnx

    flat = nnx.to_flat_state(state)
    for path, var in flat:
        value = var.get_value()
        var.set_value(jax.device_put(value, NamedSharding(mesh, param_spec(path, value.shape, mesh))))
    return nnx.from_flat_state(flat)


def state_shardings(state: Any, mesh: Mesh) -> Any:
    """The same tree as `state`, holding each leaf's NamedSharding."""
    from flax import nnx

    flat = nnx.to_flat_state(state)
    return nnx.from_flat_state([(path, var.replace(NamedSharding(mesh, param_spec(path, var.get_value().shape, mesh))))
                                for path, var in flat])


def batch_sharding(mesh: Mesh, ndim: int, leading: int = 0) -> NamedSharding:
    """Batch arrays: the batch dimension (after `leading` ones) split over data and fsdp."""
    spec = [None] * ndim
    spec[leading] = BATCH_AXES
    return NamedSharding(mesh, P(*spec))


def global_batch(local: dict[str, np.ndarray], mesh: Mesh, leading: int = 0) -> dict[str, jax.Array]:
    """This process's numpy batch as global arrays sharded over the mesh (multi-host aware)."""
    out = {}
    split = mesh.shape["data"] * mesh.shape["fsdp"]
    for key, value in local.items():
        value = np.asarray(value)
        global_size = value.shape[leading] * jax.process_count()
        if global_size % split:
            raise ConfigError(f"trainer.batch_size: a global batch of {global_size} sequences cannot be "
                              f"split over the mesh's data x fsdp = {split} devices")
        out[key] = jax.make_array_from_process_local_data(batch_sharding(mesh, value.ndim, leading), value)
    return out


# -- precision


@lru_cache(maxsize=None)
def resolve_precision(precision: str | None, platform: str, purpose: str = "train") -> str:
    """"fp32" or "bf16". auto: bf16 on GPUs and TPUs; on a CPU, bf16 for training when the CPU
    has AMX or AVX512-BF16, fp32 for decoding (batch-1 decoding is slower in bf16 there).

    Measured on the 2-core AMX development machine (benchmarks/jax_train.py --all-precisions,
    `small` preset, batch 8 x 256): a jax bf16 train step costs ~1.25x fewer CPU-seconds than
    fp32 (2.3x faster on the wall clock, a noisy figure on that shared machine), although a
    lone 1024^2 bf16 matmul under XLA is not faster than fp32 (~210-260 vs ~300 GFLOP/s):
    the gain is in memory traffic, not in the matmul units torch's oneDNN reaches.
    """
    if precision in (None, "auto"):
        if platform in ("gpu", "cuda", "rocm", "tpu"):
            return "bf16"
        return "bf16" if purpose == "train" and cpu_has_fast_bf16() else "fp32"
    if precision == "fp16":
        raise ConfigError("backend.precision: fp16 is not supported by the jax backend (use bf16 or fp32)")
    if precision not in ("fp32", "bf16"):
        raise ConfigError(f"backend.precision: '{precision}' is not one of auto, fp32, bf16")
    return precision


DTYPES = {"fp32": jnp.float32, "bf16": jnp.bfloat16}


# -- peak FLOP/s for MFU

# Dense bf16 peaks, FLOP/s, matched against device_kind (the same GPU table as rung-torch).
PEAK_BF16: list[tuple[str, float]] = [
    ("GB200", 2.5e15), ("B200", 2.25e15), ("H200", 989e12), ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12), ("H100", 989e12), ("H800", 989e12), ("GH200", 989e12),
    ("A100", 312e12), ("L40S", 362e12), ("L4", 121e12), ("A10G", 70e12), ("A10", 125e12),
    ("RTX 4090", 165e12), ("V100", 125e12), ("T4", 65e12),
    ("TPU v6", 918e12), ("TPU v5p", 459e12), ("TPU v5 lite", 197e12), ("TPU v5e", 197e12),
    ("TPU v5", 459e12), ("TPU v4", 275e12), ("TPU v3", 123e12), ("TPU v2", 45e12),
]


@lru_cache(maxsize=4)
def cpu_peak_flops(dtype: str = "bfloat16", size: int = 1024, seconds: float = 0.25) -> float:
    """FLOP/s of a square matmul under XLA on this CPU (best of a short run), summed over devices'
    shared cores: the real ceiling on this machine. `RUNG_CPU_PEAK_FLOPS` overrides it."""
    override = os.environ.get("RUNG_CPU_PEAK_FLOPS")
    if override:
        return float(override)
    device = jax.devices("cpu")[0]
    a = jax.device_put(jnp.ones((size, size), dtype), device)
    f = jax.jit(lambda x, y: x @ y)
    f(a, a).block_until_ready()
    best, runs, deadline = float("inf"), 0, time.perf_counter() + seconds
    while runs < 3 or (time.perf_counter() < deadline and runs < 50):
        start = time.perf_counter()
        f(a, a).block_until_ready()
        best = min(best, time.perf_counter() - start)
        runs += 1
    return 2.0 * size**3 / best


def peak_flops(devices: list[jax.Device], precision: str) -> float | None:
    """The mesh's peak FLOP/s: per-device table figures, or a measured CPU matmul."""
    if not devices:
        return None
    kind = devices[0].device_kind or ""
    if devices[0].platform == "cpu":
        # Simulated CPU devices share the same cores: the machine's peak, once.
        return cpu_peak_flops("bfloat16" if precision == "bf16" else "float32")
    for key, peak in PEAK_BF16:
        if key.lower() in kind.lower():
            return peak * len(devices)
    return None


def peak_memory_mb(devices: list[jax.Device]) -> float:
    """Accelerators: the most bytes any device held; CPU: the process's maximum resident set."""
    if devices and devices[0].platform != "cpu":
        peaks = [(d.memory_stats() or {}).get("peak_bytes_in_use", 0) for d in devices
                 if d.process_index == jax.process_index()]
        if any(peaks):
            return max(peaks) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024

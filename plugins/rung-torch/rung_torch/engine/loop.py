"""`TorchEngine`: torch's step, checkpoints and evaluation context under the core's loop (`rung.loop`)."""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rung.errors import RungError
from rung.loop import Resumed, StepOutput, fit_loop, run_evaluator
from rung.records import TrainResult
from rung_torch.device import resolve_device, resolve_precision
from rung_torch.engine import checkpoint as ckpt
from rung_torch.engine import distributed as dist_
from rung_torch.engine.metrics import device_peak_flops, flops_per_token, peak_memory_mb, unwrap
from rung_torch.engine.optim import build_optimizer
from rung_torch.engine.precision import Precision
from rung_torch.modeling import weights_changed


class TorchEngine:
    """Trains a `torch.nn.Module` with an objective: `engine.fit(objective, batches, options, run)`.

    `options` are the backend's options (`TorchOptions` or any `LocalModelOptions`): `device`,
    `precision` (auto/fp32/bf16/fp16), `compile`, `activation_checkpointing`, and, when present,
    `distributed` (auto/ddp/fsdp/none). `device` and `precision` arguments override them.
    Under `torchrun` the engine joins the process group when it is built, so `rank` and
    `world_size` are known before the trainer builds its batch stream.

    The loop's bookkeeping is the core's (`rung.loop.fit_loop`); this file holds torch's
    side of it: the step, checkpoints, and the evaluation context.
    """

    framework = "torch"

    def __init__(self, model: nn.Module, options: Any = None, device: Any = None, precision: str | None = None):
        self.options = options
        self.device = resolve_device(device if device is not None else getattr(options, "device", "auto"))
        self.rank, self.world_size = dist_.init(self.device)
        # `precision`: "fp32", "bf16" or "fp16" (as the jax engine has it); `amp`: how to apply it.
        self.precision = resolve_precision(precision or getattr(options, "precision", "auto"), self.device)
        self.amp = Precision(self.precision, self.device)
        self.compile = bool(getattr(options, "compile", False))
        self.activation_checkpointing = bool(getattr(options, "activation_checkpointing", False))
        self.strategy = dist_.strategy(getattr(options, "distributed", "auto"), self.world_size)
        self.model = model
        self._module: nn.Module | None = None  # what the last fit trained (FSDP: the sharded model)
        self._steps: _TorchSteps | None = None  # the fit in progress

    # ------------------------------------------------------------------ public

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def fit(self, objective, batches, options, run, evaluate=None) -> TrainResult:
        """Train `options.steps` optimizer steps of `objective`, resuming as `options.resume` says."""
        self._module = None
        self._steps = steps = _TorchSteps(self, objective, options, run)
        try:
            result = fit_loop(steps, batches, options, run, evaluate)
        finally:
            self._steps = None
        self._module = steps.module
        return result

    @contextlib.contextmanager
    def evaluation(self) -> Iterator[nn.Module]:
        """The model in eval mode, without gradients, in the training precision's autocast."""
        model = self.model
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), self.amp.autocast():
                yield model
        finally:
            model.train(was_training)

    def evaluate(self, evaluator) -> dict[str, float]:
        """`evaluator(model)` in the evaluation context (as `fit` runs it every `eval_every`)."""
        return run_evaluator(self.evaluation(), evaluator)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The model's whole state dict on the CPU, also after FSDP sharded it.

        Under FSDP every rank must call it (it gathers the shards); a backend saves what rank 0
        gets. Without FSDP it is `model.state_dict()` on the CPU.
        """
        if self.strategy == "fsdp" and self._module is not None:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            return get_model_state_dict(self._module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return {k: v.detach().cpu() for k, v in unwrap(self.model).state_dict().items()}

    def prepare_model(self) -> nn.Module:
        """Move to the device, fp32 trainable weights, checkpointing, wrap, compile."""
        model = self.model
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls on tensor cores
            torch.backends.cudnn.allow_tf32 = True
        if _device_of(model) != self.device:
            model.to(self.device)
        with torch.no_grad():
            for p in model.parameters():
                # Mixed precision keeps master weights in fp32; frozen weights stay as loaded.
                if p.requires_grad and p.is_floating_point() and p.dtype in (torch.float16, torch.bfloat16):
                    p.data = p.data.float()
        if self.activation_checkpointing:
            enable_activation_checkpointing(model)
        model.train()
        if self.compile and self.strategy != "fsdp":
            model.compile()
        wrapped = dist_.wrap(model, self.strategy, self.device, self.precision)
        if self.compile and self.strategy == "fsdp":
            model.compile()
        return wrapped


class _TorchSteps:
    """torch's half of one `fit` (`rung.loop.StepEngine`): the step, checkpoints, evaluation."""

    def __init__(self, engine: TorchEngine, objective, options, run) -> None:
        self.engine, self.objective, self.opts, self.run_ = engine, objective, options, run
        self.device, self.rank, self.world = engine.device, engine.rank, engine.world_size
        self.is_main = engine.is_main
        self.checkpoints = ckpt.CheckpointDir(Path(run.output_dir) / "checkpoints", options.keep_checkpoints)
        self.module: nn.Module | None = None

    def prepare(self) -> None:
        seed_everything(int(getattr(self.run_, "seed", 0) or 0))
        self.module = self.engine.prepare_model()
        self.params = [p for p in self.engine.model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(self.engine.model, self.opts, self.device)
        self.scaler = self.engine.amp.scaler()

    # ------------------------------------------------------------------ the step

    def train_step(self, batches, lr: float):
        engine, accum = self.engine, len(batches)
        for group in self.optimizer.param_groups:  # the loop's rate, exactly: what it logs
            group["lr"] = lr
        ddp, fsdp = engine.strategy == "ddp", engine.strategy == "fsdp"
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float32)
        extra: dict[str, Any] = {}
        tokens = 0
        for micro, raw in enumerate(batches):
            batch = to_device(raw, self.device)
            ids = batch.get("input_ids")
            if torch.is_tensor(ids):
                tokens += ids.numel()
            last = micro == accum - 1
            no_sync = self.module.no_sync() if ddp and not last else contextlib.nullcontext()
            if fsdp and accum > 1:  # reduce-scatter gradients on the last micro-batch only
                self.module.set_requires_gradient_sync(last)
            with no_sync:
                with engine.amp.autocast():
                    loss, metrics = self.objective(self.module, batch)
                loss = loss.float()
                scaled = loss / accum
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            loss_sum += loss.detach()
            for key, value in (metrics or {}).items():
                value = value.detach().float() if torch.is_tensor(value) else float(value)
                extra[key] = extra.get(key, 0.0) + value
        stats = dist_.all_sum(torch.stack([loss_sum / accum, torch.tensor(float(tokens), device=self.device)]).double())
        out = StepOutput(loss=float(stats[0]) / self.world, grad_norm=float("nan"), tokens=int(stats[1]),
                         metrics={key: float(value) / accum for key, value in extra.items()})
        # Every rank agrees on the loss (all-reduced) and the norm, so all take the same branch.
        if math.isfinite(out.loss):
            out.grad_norm = self.clip()
            out.overflow = self.scaler is not None and not math.isfinite(out.grad_norm)
            if self.scaler is not None:
                self.scaler.step(self.optimizer)  # skips the update on inf gradients
                self.scaler.update()
            elif math.isfinite(out.grad_norm):
                self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        weights_changed(engine.model)  # a fused AdamW step leaves no trace generation could see
        return lambda: out  # torch reads its numbers at once: it needs them before the update

    def clip(self) -> float:
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        max_norm = self.opts.grad_clip if self.opts.grad_clip else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm, foreach=True)
        if hasattr(norm, "full_tensor"):  # FSDP2: a DTensor
            norm = norm.full_tensor()
        return float(norm)

    def evaluation(self):
        return self.engine.evaluation()

    def weights_finite(self) -> bool:
        finite = torch.tensor(
            [float(all(bool(torch.isfinite(_local(p)).all()) for p in self.params))], device=self.device
        )
        return float(dist_.all_sum(finite)) == self.world

    def gather(self, value: Any) -> list[Any]:
        return dist_.all_gather_json(value)

    def flops_per_token(self, seq_len: int) -> float | None:
        return flops_per_token(self.engine.model, seq_len)

    def peak_flops(self) -> float | None:
        peak = device_peak_flops(self.device, self.engine.precision)
        return peak * self.world if peak else None

    def peak_memory_mb(self) -> float:
        return peak_memory_mb(self.device)

    def finish(self) -> None:
        pass  # the model was trained in place

    def close(self) -> None:
        pass

    # ------------------------------------------------------------------ checkpoints

    def save(self, step: int, state: dict[str, Any]) -> Path:
        model_sd, optim_sd = full_state(self.module, self.optimizer, self.engine.strategy == "fsdp")
        rng_tensors, rng_json = ckpt.rng_state(self.device)
        per_rank = dist_.all_gather_json(
            {"rng": rng_json, "rng_tensors": {k: v.tolist() for k, v in rng_tensors.items()}})
        path = self.checkpoints.root / ckpt.step_dir_name(step)
        if self.is_main:
            optim_tensors, optim_meta = ckpt.flatten_optimizer(optim_sd)
            rng_out = {
                f"rank{r}.{name}": torch.tensor(values, dtype=torch.uint8)
                for r, item in enumerate(per_rank)
                for name, values in item["rng_tensors"].items()
            }
            meta = {
                "world_size": self.world,
                "precision": self.engine.precision,
                "optimizer": optim_meta,
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "rng": [item["rng"] for item in per_rank],
                "loop": state,
            }
            path = self.checkpoints.save(step, {"model": model_sd, "optimizer": optim_tensors, "rng": rng_out}, meta)
        dist_.barrier()
        return path

    def resume(self, resume: str) -> Resumed | None:
        """Load the checkpoint `resume` names into the model, optimizer, scaler and RNGs."""
        found = None
        if self.is_main:
            found = ckpt.find_checkpoint(resume, self.checkpoints.root)
        found = dist_.broadcast_json(str(found) if found else None)
        if found is None:
            return None
        path = Path(found)
        state = ckpt.read_state(path)
        if state.get("world_size", 1) != self.world:
            raise RungError(
                f"checkpoint {path} was written by {state.get('world_size')} processes and this run has "
                f"{self.world}; resume with the same number (torchrun --nproc_per_node) or resume: never"
            )
        optim_sd = ckpt.unflatten_optimizer(ckpt.load_tensors(path, "optimizer"), state["optimizer"])
        try:
            load_full_state(self.module, self.optimizer, ckpt.load_tensors(path, "model"), optim_sd,
                            self.engine.strategy == "fsdp")
        except (RuntimeError, KeyError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RungError(
                f"checkpoint {path} does not fit this model ({first[:200]}); "
                "set trainer.resume: never or use another output_dir"
            ) from None
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        rng = ckpt.load_tensors(path, "rng")
        prefix = f"rank{self.rank}."
        mine = {k[len(prefix):]: v for k, v in rng.items() if k.startswith(prefix)}
        ckpt.set_rng_state(mine, state["rng"][self.rank], self.device)
        # Checkpoints before the shared loop kept its state at the top level.
        loop_state = state.get("loop") or {k: state[k] for k in ("data", "tokens_seen", "final_loss", "metrics")
                                          if k in state}
        return Resumed(step=int(state["step"]), path=str(path), state=loop_state)


# ---------------------------------------------------------------------- state dicts


def full_state(module: nn.Module, optimizer: torch.optim.Optimizer, sharded: bool):
    """The whole model's and optimizer's state, keyed by parameter names, on the CPU.

    FSDP2 gathers shards with torch.distributed.checkpoint (collective: every rank calls);
    otherwise plain `state_dict()`s, the optimizer's integer keys renamed to parameter names.
    """
    if sharded:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        full = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return (get_model_state_dict(module, options=full),
                get_optimizer_state_dict(module, optimizer, options=full))
    model = unwrap(module)
    index_to_name = _optimizer_names(model, optimizer)
    optim_sd = optimizer.state_dict()
    optim_sd = {
        "state": {index_to_name[i]: entry for i, entry in optim_sd["state"].items()},
        "param_groups": [{**g, "params": [index_to_name[i] for i in g["params"]]} for g in optim_sd["param_groups"]],
    }
    return model.state_dict(), optim_sd


def load_full_state(module, optimizer, model_sd, optim_sd, sharded: bool) -> None:
    """The inverse of `full_state`."""
    if sharded:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        full = StateDictOptions(full_state_dict=True)
        set_model_state_dict(module, model_sd, options=full)
        set_optimizer_state_dict(module, optimizer, optim_sd, options=full)
        return
    model = unwrap(module)
    model.load_state_dict(model_sd)
    name_to_index = {name: i for i, name in _optimizer_names(model, optimizer).items()}
    missing = [name for group in optim_sd["param_groups"] for name in group["params"] if name not in name_to_index]
    if missing or len(name_to_index) != sum(len(g["params"]) for g in optim_sd["param_groups"]):
        raise RungError(
            "the checkpoint's optimizer state does not match the model's trainable parameters "
            f"(e.g. {missing[:3] or 'a different count'}); resume: never starts afresh"
        )
    optimizer.load_state_dict({
        "state": {name_to_index[name]: entry for name, entry in optim_sd["state"].items()},
        "param_groups": [{**g, "params": [name_to_index[n] for n in g["params"]]} for g in optim_sd["param_groups"]],
    })


def _optimizer_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[int, str]:
    """Optimizer state index -> parameter name (indices count params across groups, in order)."""
    names = {id(p): name for name, p in model.named_parameters()}
    out, index = {}, 0
    for group in optimizer.param_groups:
        for p in group["params"]:
            out[index] = names[id(p)]
            index += 1
    return out


# ---------------------------------------------------------------------- free helpers


def seed_everything(seed: int) -> None:
    """torch (CPU and CUDA), numpy and python `random` from one seed."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """numpy arrays and tensors of `batch` on `device`; anything else as it is."""
    out = {}
    for key, value in batch.items():
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(np.ascontiguousarray(value))
        if torch.is_tensor(value):
            value = value.to(device, non_blocking=device.type == "cuda")
        out[key] = value
    return out


def enable_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each transformer block's activations in the backward pass.

    rung models have an `activation_checkpointing` switch; transformers models (also inside
    peft) have `gradient_checkpointing_enable`; any other model with a `layers` ModuleList
    gets each block's forward wrapped in `torch.utils.checkpoint`.
    """
    inner = unwrap(model)
    switched = False
    for module in inner.modules():
        if "activation_checkpointing" in vars(module):
            module.activation_checkpointing = True
            switched = True
    if switched:
        return
    enable = getattr(inner, "gradient_checkpointing_enable", None)
    if callable(enable):
        enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return
    from torch.utils.checkpoint import checkpoint

    for layer in dist_.transformer_layers(inner):
        if getattr(layer, "_rung_checkpointed", False):
            continue
        forward = layer.forward

        def checkpointed(*args, _forward=forward, **kwargs):
            if torch.is_grad_enabled():
                return checkpoint(_forward, *args, use_reentrant=False, **kwargs)
            return _forward(*args, **kwargs)

        layer.forward = checkpointed
        layer._rung_checkpointed = True


def _device_of(model: nn.Module) -> torch.device | None:
    for p in model.parameters():
        return p.device
    return None


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor

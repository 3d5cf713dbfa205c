"""LoRA for rung's JAX model: Flax NNX `nnx.LoRA` adapters with alpha scaling, saved as PEFT.

`apply_lora(model, rank, alpha, targets)` replaces each targeted `nnx.Linear` (by module name:
`q_proj`, `v_proj`, ...) in place with a `LoRALinear` that keeps the frozen base kernel at the
same path and adds `nnx.LoRA` factors (`nnx.LoRAParam`): y = x W + (alpha / rank) x A B.
The engine then trains only the adapters (`wrt=nnx.LoRAParam`); the base weights still save
under their own names. `save_adapter` writes `adapter_model.safetensors` in PEFT's names
(`base_model.model.<module path>.lora_A.weight` [r, in], `lora_B.weight` [out, r]) and
`adapter_config.json`, so `peft.PeftModel.from_pretrained(torch_model, dir)` loads them on a
rung-torch or transformers Llama; `load_adapter` reads the same files back (and adapters peft
wrote for rung-torch's model: plain LoRA on these module names).

`NnxAdapters(backend)` is the jax backend's `rung.interfaces.Adapters` (`backend.adapters()`),
what the `lora` trainer and `rung export` use; `disabled(model)` switches the adapters off
inside a block (a preference or RL trainer's reference policy). Plain LoRA only: DoRA,
rsLoRA, QLoRA and modules_to_save other than the score head (`rung_jax.scoring`, always
trained beside the adapters and saved with them as peft saves `modules_to_save`) are refused
in one line; LoRA dropout is not applied (noted once).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rung.errors import ConfigError, RungError
from rung.interfaces import ADAPTER_NOTE
from rung.records import LoraSpec

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


class LoRALinear(nnx.Module):
    """A frozen `nnx.Linear` kernel plus a scaled low-rank update from `nnx.LoRA`."""

    def __init__(self, base: nnx.Linear, rank: int, alpha: float, rngs: nnx.Rngs) -> None:
        self.kernel = base.kernel  # the same Param: the path `...q_proj.kernel` is unchanged
        self.in_features, self.out_features = base.in_features, base.out_features
        self.lora = nnx.LoRA(base.in_features, rank, base.out_features, rngs=rngs)
        self.rank, self.alpha = rank, float(alpha)
        # Static (part of the graph definition, so a jitted function compiles each setting
        # once); `NnxAdapters.disabled` turns it off for a block: the base layer alone.
        self.adapter_enabled = True

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.kernel[...].astype(x.dtype)
        if not self.adapter_enabled:
            return x @ kernel
        a, b = self.lora.lora_a[...].astype(x.dtype), self.lora.lora_b[...].astype(x.dtype)
        return x @ kernel + ((x @ a) @ b) * jnp.asarray(self.scaling, x.dtype)


def _targets(model: nnx.Module, targets: Sequence[str]) -> list[tuple[tuple[Any, ...], nnx.Module, str]]:
    found = []
    for path, module in nnx.iter_modules(model) if hasattr(nnx, "iter_modules") else model.iter_modules():
        for name in targets:
            child = getattr(module, name, None)
            if isinstance(child, (nnx.Linear, LoRALinear)):
                found.append((tuple(path) + (name,), module, name))
    return found


def apply_lora(model: nnx.Module, rank: int = 8, alpha: float = 16.0,
               targets: Sequence[str] = DEFAULT_TARGETS, seed: int = 0) -> nnx.Module:
    """Add LoRA adapters to every Linear named in `targets` (in place; returns the model)."""
    if rank < 1:
        raise RungError(f"LoRA rank must be at least 1, got {rank}")
    found = _targets(model, targets)
    if not found:
        raise RungError(f"no linear layer named {', '.join(targets)} in the model: nothing to adapt")
    rngs = nnx.Rngs(seed)
    for _, parent, name in found:
        child = getattr(parent, name)
        if isinstance(child, LoRALinear):
            raise RungError(f"{name} already has a LoRA adapter")
        setattr(parent, name, LoRALinear(child, rank, alpha, rngs))
    # (Nothing else is stored on the model: its attributes are part of the NNX graph
    # definition, which must stay hashable for the jitted generation and train step.)
    return model


def lora_modules(model: nnx.Module) -> list[tuple[str, LoRALinear]]:
    return [(".".join(str(p) for p in path), m) for path, m in
            (nnx.iter_modules(model) if hasattr(nnx, "iter_modules") else model.iter_modules())
            if isinstance(m, LoRALinear)]


def save_adapter(model: nnx.Module, directory: str | Path, base_model: str | None = None) -> None:
    """`adapter_model.safetensors` + `adapter_config.json` in PEFT's format."""
    from safetensors.numpy import save_file

    from rung_jax.weights import host_array

    from rung_jax.scoring import HEAD, has_score_head

    modules = lora_modules(model)
    if not modules:
        raise RungError("the model has no LoRA adapters to save")
    tensors = {}
    for path, module in modules:
        a = host_array(module.lora.lora_a.get_value()).astype(np.float32)  # [in, r]
        b = host_array(module.lora.lora_b.get_value()).astype(np.float32)  # [r, out]
        tensors[f"base_model.model.{path}.lora_A.weight"] = np.ascontiguousarray(a.T)
        tensors[f"base_model.model.{path}.lora_B.weight"] = np.ascontiguousarray(b.T)
    saved_in_full = []
    if has_score_head(model):  # trained in full beside the adapters: peft's modules_to_save key
        kernel = host_array(getattr(model, HEAD).kernel.get_value()).astype(np.float32)  # [hidden, 1]
        tensors[f"base_model.model.{HEAD}.weight"] = np.ascontiguousarray(kernel.T)
        saved_in_full.append(HEAD)
    first = modules[0][1]
    config = {
        "peft_type": "LORA",
        # None, as rung-lora writes for rung models: PeftModel then wraps rung-torch's model
        # and transformers' LlamaForCausalLM alike ("CAUSAL_LM" needs HF generation methods).
        "task_type": None,
        "base_model_name_or_path": base_model,
        "r": first.rank,
        "lora_alpha": first.alpha,
        "lora_dropout": 0.0,
        "target_modules": sorted({path.rsplit(".", 1)[-1] for path, _ in modules}),
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": saved_in_full or None,
    }
    if jax.process_index() == 0:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / (ADAPTER_WEIGHTS + ".tmp")
        save_file(tensors, str(tmp), metadata={"format": "pt"})
        tmp.replace(directory / ADAPTER_WEIGHTS)
        (directory / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2), encoding="utf-8")


def load_adapter(model: nnx.Module, directory: str | Path) -> nnx.Module:
    """Add the adapters saved in `directory` (PEFT format, from rung-jax or peft) to `model`."""
    from safetensors.numpy import load_file

    directory = Path(directory)
    try:
        config = json.loads((directory / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RungError(f"{directory} has no {ADAPTER_CONFIG}: not a LoRA adapter") from None
    if config.get("use_dora") or config.get("peft_type", "LORA") != "LORA":
        raise RungError(f"{directory}: only plain LoRA adapters load in the jax backend")
    targets = config["target_modules"]
    targets = [targets] if isinstance(targets, str) else list(targets)
    apply_lora(model, int(config["r"]), float(config["lora_alpha"]), targets)
    tensors = load_file(str(directory / ADAPTER_WEIGHTS))
    _load_score_head(model, tensors, directory)
    for path, module in lora_modules(model):
        for factor, var in (("lora_A", module.lora.lora_a), ("lora_B", module.lora.lora_b)):
            key = next((k for k in (f"base_model.model.{path}.{factor}.weight",
                                    f"base_model.model.{path}.{factor}.default.weight") if k in tensors), None)
            if key is None:
                raise RungError(f"{directory}: no {factor} weight for {path}")
            value = tensors[key].T
            if value.shape != var.get_value().shape:
                raise RungError(f"{directory}: {key} has shape {tensors[key].shape}, expected "
                                f"{var.get_value().shape[::-1]}")
            var.set_value(jnp.asarray(value, var.get_value().dtype))
    return model


def _load_score_head(model: nnx.Module, tensors: dict[str, np.ndarray], directory: Path) -> None:
    """The score head saved beside the adapters (peft's `modules_to_save` key), if any."""
    from rung_jax.scoring import HEAD, attach_score_head, has_score_head

    names = (f"base_model.model.{HEAD}.weight", f"base_model.model.{HEAD}.modules_to_save.default.weight")
    value = next((tensors[k] for k in names if k in tensors), None)
    if value is None:
        return
    if not has_score_head(model):
        attach_score_head(model)
    var = getattr(model, HEAD).kernel
    if value.T.shape != var.get_value().shape:
        raise RungError(f"{directory}: {HEAD}.weight has shape {value.shape}, expected {var.get_value().shape[::-1]}")
    var.set_value(jnp.asarray(value.T, var.get_value().dtype))


def merge_lora(model: nnx.Module) -> nnx.Module:
    """Fold every adapter into its base kernel and put plain Linears back (in place)."""
    for _, parent, name in _targets(model, ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                            "down_proj", "lm_head")):
        child = getattr(parent, name)
        if not isinstance(child, LoRALinear):
            continue
        kernel = child.kernel.get_value()
        delta = child.lora.lora_a.get_value() @ child.lora.lora_b.get_value() * child.scaling
        linear = nnx.Linear(child.in_features, child.out_features, use_bias=False, rngs=nnx.Rngs(0))
        linear.kernel.set_value((kernel + delta).astype(kernel.dtype))
        setattr(parent, name, linear)
    return model


class NnxAdapters:
    """`rung.interfaces.Adapters` for the jax backend's NNX model (adapters added in place)."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend

    def add_lora(self, spec: LoraSpec) -> None:
        from rung_jax.scoring import HEAD

        # The score head is trained beside the adapters anyway (rung_jax.scoring): naming it is fine.
        in_full = [name for name in spec.modules_to_save if name != HEAD]
        refused = [name for name, wanted in (("use_dora", spec.dora), ("use_rslora", spec.rslora),
                                             ("qlora", spec.qlora), ("modules_to_save", bool(in_full)))
                   if wanted]
        if refused:
            raise ConfigError(f"trainer.{refused[0]}: LoRA on the jax backend is plain LoRA only "
                              f"(use the torch or hf backend for DoRA, rsLoRA, QLoRA and modules_to_save "
                              f"other than '{HEAD}')")
        model = self.backend.model
        targets = self._targets(model, spec.target_modules)
        if spec.dropout:
            from rung.console import get_console

            get_console().print(f"note: LoRA on jax applies no dropout (trainer.dropout={spec.dropout} is not used)",
                                highlight=False, markup=False)
        apply_lora(model, spec.r, spec.scale_alpha, targets, seed=spec.seed)

    @staticmethod
    def _targets(model: nnx.Module, choice: str | Sequence[str]) -> tuple[str, ...]:
        if choice == "auto":
            return DEFAULT_TARGETS
        if choice == "all-linear":
            return ALL_LINEAR
        if isinstance(choice, str):
            raise ConfigError(f"trainer.target_modules: '{choice}' is not auto, all-linear or a list of names")
        present = {name for _, _, name in _targets(model, ALL_LINEAR)}
        missing = [name for name in choice if name not in present]
        if missing:
            raise ConfigError(f"trainer.target_modules: no linear layer named {', '.join(missing)}; "
                              f"this model has: {', '.join(sorted(present))}")
        return tuple(choice)

    def trainable_parameters(self) -> tuple[int, int]:
        """(trainable, total): what the engine's step trains (`rung_jax.engine.trainable_filter`)."""
        from rung_jax.engine import trainable_filter

        sizes = lambda state: sum(int(np.prod(v.get_value().shape)) for _, v in nnx.to_flat_state(state))  # noqa: E731
        model = self.backend.model
        return sizes(nnx.state(model, trainable_filter(model))), sizes(nnx.state(model, nnx.Param))

    def save_adapter(self, directory: str | Path, **note: Any) -> None:
        save_adapter(self.backend.model, directory, base_model=note.get("base"))
        if jax.process_index() == 0:
            (Path(directory) / ADAPTER_NOTE).write_text(json.dumps(note, indent=2), encoding="utf-8")

    def load_adapter(self, directory: str | Path, merge: bool = True) -> None:
        load_adapter(self.backend.model, directory)
        if merge:
            self.merge_adapter()

    @contextlib.contextmanager
    def disabled(self, model: Any = None) -> Iterator[Any]:
        """`model` (default: the backend's) with every adapter switched off inside the block: the
        base model's outputs exactly, no second model in memory. A static switch on each
        `LoRALinear`, so it works on concrete models and inside a traced step alike; a jitted
        objective compiles each setting once."""
        model = self.backend.model if model is None else model
        layers = [module for _, module in lora_modules(model)]
        before = [module.adapter_enabled for module in layers]
        for module in layers:
            module.adapter_enabled = False
        try:
            yield model
        finally:
            for module, enabled in zip(layers, before):
                module.adapter_enabled = enabled

    def merge_adapter(self) -> None:
        if not lora_modules(self.backend.model):
            raise RungError("the model has no LoRA adapters to merge")
        merge_lora(self.backend.model)

"""LoRA adapters on torch models through peft: `backend.adapters()` of the torch and hf backends.

`PeftAdapters(backend)` is rung-torch's implementation of `rung.interfaces.Adapters`: default
target modules per architecture, LoRA / DoRA / rsLoRA / QLoRA through peft, saving in the PEFT
format (`adapter_model.safetensors`, `adapter_config.json`) with rung's note beside it
(`rung_adapter.json`: base, backend, options, chat template), loading and merging. It works on
`backend.model` as it is (rung's `Transformer` or any transformers model), replacing it with
the peft wrapper, so the backend's engine then trains only the adapters (and a score head,
kept trainable through `modules_to_save`). `disabled(model)` switches the adapters off for a
block: the frozen base as a preference or RL trainer's reference, no second model in memory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rung.errors import RungError
from rung.interfaces import ADAPTER_NOTE
from rung.records import LoraSpec
from rung_torch.modeling import weights_changed

OUTPUT_HEADS = ("lm_head", "output", "embed_out", "score")

# Architectures whose attention projections go by these names (checked in this order).
ATTENTION_NAMES: list[tuple[str, ...]] = [
    ("q_proj", "k_proj", "v_proj", "o_proj"),  # Llama, Mistral, Qwen, Gemma, rung's own models
    ("c_attn",),  # GPT-2
    ("query_key_value",),  # GPT-NeoX, Falcon, Bloom
    ("qkv_proj", "o_proj"),  # Phi-3
    ("Wqkv", "out_proj"),  # MPT / Phi-2 style
    ("q", "k", "v", "o"),  # T5
]


class PeftAdapters:
    """`rung.interfaces.Adapters` for a backend whose `.model` is a torch causal LM."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend

    def add_lora(self, spec: LoraSpec) -> None:
        from rung_torch.scoring import SCORE, score_head

        if score_head(self.backend.model) is not None and SCORE not in spec.modules_to_save:
            # A reward model's or PPO value's head is trained in full beside the adapters.
            spec = dataclasses.replace(spec, modules_to_save=(*spec.modules_to_save, SCORE))
        with torch.random.fork_rng(devices=[]):  # the adapters' initial weights come from spec.seed
            torch.manual_seed(spec.seed)
            self.backend.model = wrap_lora(self.backend.model, spec)

    def trainable_parameters(self) -> tuple[int, int]:
        return count_parameters(self.backend.model)

    def save_adapter(self, directory: str | Path, **note: Any) -> None:
        model = self.backend.model
        if not hasattr(model, "peft_config"):
            raise RungError("the model has no LoRA adapters to save")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for config in model.peft_config.values():
            config.base_model_name_or_path = note.get("base")
        # The vocabulary is never resized here, so embeddings are saved only as modules_to_save.
        model.save_pretrained(str(directory), safe_serialization=True, save_embedding_layers=False)
        (directory / ADAPTER_NOTE).write_text(json.dumps(note, indent=2), encoding="utf-8")

    def load_adapter(self, directory: str | Path, merge: bool = True) -> None:
        from peft import PeftModel

        if not Path(directory, "adapter_config.json").is_file():
            raise RungError(f"{directory}: no adapter_config.json here; is it a PEFT adapter directory?")
        model = PeftModel.from_pretrained(self.backend.model, str(directory), is_trainable=False)
        self.backend.model = model
        if merge:
            self.merge_adapter()
        self.backend.model.eval()

    def merge_adapter(self) -> None:
        model = self.backend.model
        if not hasattr(model, "merge_and_unload"):
            raise RungError("the model has no LoRA adapters to merge")
        merged = model.merge_and_unload()
        weights_changed(merged)  # peft merges through `weight.data`
        self.backend.model = merged

    @contextlib.contextmanager
    def disabled(self, model: Any = None) -> Iterator[Any]:
        """`model` (default: the backend's; or the one an engine's evaluation context yields)
        with its LoRA adapters switched off inside the block: the base model's outputs, and a
        score head under `modules_to_save` back to its original weights."""
        model = self.backend.model if model is None else model
        peft = peft_model(model)
        if peft is None:
            raise RungError("the model has no LoRA adapters to switch off")
        with peft.disable_adapter():
            yield model


def peft_model(model: Any) -> Any | None:
    """The peft model that is `model` or is under its DDP/compile wrappers, or None."""
    from rung_torch.modeling import unwrap

    model = unwrap(model)
    return model if hasattr(model, "disable_adapter") and hasattr(model, "peft_config") else None


def _linear_like(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    return type(module).__name__ in ("Conv1D", "Linear4bit", "Linear8bitLt")


def linear_names(model: nn.Module) -> set[str]:
    """Last name parts of every linear layer except the output head."""
    names = set()
    for full, module in model.named_modules():
        leaf = full.rsplit(".", 1)[-1]
        if _linear_like(module) and leaf not in OUTPUT_HEADS:
            names.add(leaf)
    return names


def default_targets(model: nn.Module, choice: str | list[str] | tuple[str, ...] = "auto") -> list[str]:
    """The modules LoRA wraps: named, all linear layers, or the attention projections found."""
    present = linear_names(model)
    if isinstance(choice, (list, tuple)):
        missing = [name for name in choice if name not in present]
        if missing:
            raise RungError(f"trainer.target_modules: no linear layer named {', '.join(missing)}; "
                            f"this model has: {', '.join(sorted(present))}")
        return list(choice)
    if choice == "all-linear":
        return sorted(present)
    if choice != "auto":
        raise RungError(f"trainer.target_modules: '{choice}' is not auto, all-linear or a list of names")
    for group in ATTENTION_NAMES:
        if all(name in present for name in group):
            return list(group)
    try:  # peft's own table, by the model's type
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as table
    except ImportError:
        table = {}
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type in table:
        return list(table[model_type])
    if not present:
        raise RungError("LoRA found no linear layer to adapt in this model")
    return sorted(present)


def require_qlora() -> None:
    """QLoRA's requirements, checked before anything is read or built."""
    if not torch.cuda.is_available():
        raise RungError("trainer.qlora: QLoRA needs a CUDA GPU (bitsandbytes 4-bit kernels) and this "
                        "machine has none; set trainer.qlora=false to train LoRA on full-precision weights")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise RungError("trainer.qlora needs bitsandbytes: pip install 'rung-torch[qlora]'") from None


def quantize_4bit(model: nn.Module) -> nn.Module:
    """QLoRA: the base's linear layers in 4-bit NF4 through bitsandbytes (CUDA only)."""
    require_qlora()
    import bitsandbytes as bnb

    if getattr(model, "is_loaded_in_4bit", False):
        return model  # the backend loaded it quantized already
    compute = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear) and name not in OUTPUT_HEADS:
                quantized = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                              compute_dtype=compute, quant_type="nf4", device="meta")
                quantized.weight = bnb.nn.Params4bit(child.weight.data.to("cpu"), requires_grad=False,
                                                     quant_type="nf4")
                if child.bias is not None:
                    quantized.bias = nn.Parameter(child.bias.data, requires_grad=False)
                setattr(parent, name, quantized)
    model.to("cuda")  # bitsandbytes quantizes the weights as they move to the GPU
    model.is_loaded_in_4bit = True
    return model


def wrap_lora(model: nn.Module, spec: LoraSpec) -> Any:
    """The model with LoRA adapters (peft), only the adapters (and modules_to_save) trainable."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise RungError("LoRA on torch models needs peft: pip install peft") from None

    if spec.qlora:
        from peft import prepare_model_for_kbit_training

        model = quantize_4bit(model)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    targets = default_targets(model, spec.target_modules)
    conv1d = any(type(m).__name__ == "Conv1D" and name.rsplit(".", 1)[-1] in targets
                 for name, m in model.named_modules())  # GPT-2 stores its weights transposed
    config = LoraConfig(
        r=spec.r,
        lora_alpha=spec.scale_alpha,
        lora_dropout=spec.dropout,
        target_modules=targets,
        modules_to_save=list(spec.modules_to_save) or None,
        use_dora=spec.dora,
        use_rslora=spec.rslora,
        bias="none",
        fan_in_fan_out=conv1d,
        # None for rung's own model: PeftModel then wraps it and transformers' Llama alike
        # ("CAUSAL_LM" needs transformers' generation methods).
        task_type="CAUSAL_LM" if _is_hf_causal_lm(model) else None,
    )
    return get_peft_model(model, config)


def _is_hf_causal_lm(model: nn.Module) -> bool:
    try:
        from transformers import PreTrainedModel
    except ImportError:
        return False
    return isinstance(model, PreTrainedModel) and hasattr(model, "generate")


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total

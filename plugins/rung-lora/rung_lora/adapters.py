"""LoRA through peft: default target modules per architecture, QLoRA, saving, loading, merging."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rung.errors import RungError

SIDECAR = "rung_adapter.json"  # where rung notes the base model, backend and chat template
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "chat_template.jinja", "vocab.json", "merges.txt", "tokenizer.model")
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


def default_targets(model: nn.Module, choice: str | list[str] = "auto") -> list[str]:
    """The modules LoRA wraps: named, all linear layers, or the attention projections found."""
    present = linear_names(model)
    if isinstance(choice, list):
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


def quantize_4bit(model: nn.Module) -> nn.Module:
    """QLoRA: the base's linear layers in 4-bit NF4 through bitsandbytes (CUDA only)."""
    if not torch.cuda.is_available():
        raise RungError("trainer.qlora: QLoRA needs a CUDA GPU (bitsandbytes 4-bit kernels) and this "
                        "machine has none; set trainer.qlora=false to train LoRA on full-precision weights")
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise RungError("trainer.qlora needs bitsandbytes: pip install 'rung-lora[qlora]'") from None
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


def wrap_lora(model: nn.Module, options: Any) -> Any:
    """The model with LoRA adapters (peft), only the adapters (and modules_to_save) trainable."""
    from peft import LoraConfig, get_peft_model

    if options.qlora:
        from peft import prepare_model_for_kbit_training

        model = quantize_4bit(model)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    targets = default_targets(model, options.target_modules)
    conv1d = any(type(m).__name__ == "Conv1D" and name.rsplit(".", 1)[-1] in targets
                 for name, m in model.named_modules())  # GPT-2 stores its weights transposed
    config = LoraConfig(
        r=options.r,
        lora_alpha=options.alpha if options.alpha is not None else 2 * options.r,
        lora_dropout=options.dropout,
        target_modules=targets,
        modules_to_save=list(options.modules_to_save) or None,
        use_dora=options.use_dora,
        use_rslora=options.use_rslora,
        bias="none",
        fan_in_fan_out=conv1d,
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


def save_adapter(model: Any, directory: Path, *, base: str | None, backend: str, backend_options: dict,
                 tokenizer: Any = None, chat_template: str | None = None) -> None:
    """PEFT format (adapter_model.safetensors + adapter_config.json) and rung's notes beside it."""
    directory.mkdir(parents=True, exist_ok=True)
    for config in model.peft_config.values():
        config.base_model_name_or_path = base
    # The vocabulary is never resized here, so embeddings are saved only as modules_to_save.
    model.save_pretrained(str(directory), safe_serialization=True, save_embedding_layers=False)
    save_tokenizer(tokenizer, directory, chat_template)
    note = {"base": base, "backend": backend, "backend_options": backend_options,
            "chat_template": chat_template}
    (directory / SIDECAR).write_text(json.dumps(note, indent=2), encoding="utf-8")


def save_tokenizer(tokenizer: Any, directory: Path, chat_template: str | None) -> None:
    """The tokenizer (when it can save itself) and rung's chat template, if one was used."""
    if tokenizer is not None and hasattr(tokenizer, "save") and not (directory / "tokenizer.json").exists():
        try:
            tokenizer.save(directory)
        except Exception:  # noqa: BLE001 - a tokenizer that cannot save is not fatal here
            pass
    if chat_template:
        (directory / "chat_template.jinja").write_text(chat_template, encoding="utf-8")


def read_sidecar(adapter_dir: str | Path) -> dict[str, Any]:
    path = Path(adapter_dir)
    if not (path / "adapter_config.json").is_file():
        raise RungError(f"{adapter_dir}: no adapter_config.json here; is it a PEFT adapter directory?")
    note = path / SIDECAR
    return json.loads(note.read_text(encoding="utf-8")) if note.is_file() else {}


def load_adapter(backend: Any, adapter_dir: str | Path, merge: bool = True) -> Any:
    """Put a saved adapter on `backend.model` (merged into its weights unless merge=False)."""
    from peft import PeftModel

    read_sidecar(adapter_dir)
    base = backend.model
    model = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=False)
    if merge:
        model = model.merge_and_unload()
    model.eval()
    backend.model = model
    return model


def copy_tokenizer_files(source: Path, target: Path) -> None:
    for name in TOKENIZER_FILES:
        if (source / name).is_file() and not (target / name).exists():
            shutil.copy2(source / name, target / name)

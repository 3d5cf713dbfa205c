"""Options of the `hf` backend and the `hf` tokenizer (pydantic only: nothing heavy here)."""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator

from rung.options import Options, SamplingDefaults
from rung.paths import existing_path, looks_like_path, path_problem

#: Accepted spellings of a weights dtype, and the name transformers/torch give each.
DTYPES: dict[str, str] = {
    "auto": "auto",
    "float32": "float32", "fp32": "float32",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float16": "float16", "fp16": "float16", "half": "float16",
}


#: `adapter`: a PEFT adapter folder (what a lora run saves).
adapter_folder = existing_path("folder", what="a PEFT adapter directory", marker="adapter_config.json")


class HubOptions(Options):
    """Where a model or tokenizer comes from on the Hugging Face hub."""

    revision: str | None = Field(None, description="hub branch, tag or commit (null: main)")
    trust_remote_code: bool = Field(
        False, description="run the model repository's own Python code (only for repositories you trust)"
    )
    local_files_only: bool = Field(
        False, description="never reach the hub: use a local directory or the local cache only"
    )


def local_or_hub(value: str | None, info: ValidationInfo, field: str, what: str = "model") -> str | None:
    """`value` if it can be loaded: an existing folder (or, for a tokenizer, its file), or a hub
    id. What cannot be a hub id (`./x`, `/x`, `~/x`, `a/b/c`) must exist; a hub id is refused
    only where the hub cannot be used (HF_HUB_OFFLINE, or `local_files_only`) and it is not in
    the local cache. Checked when the config is validated, before a run prepares data (the
    same rules `rung_hf.loading.resolve` loads by); no network is touched here."""
    if value is None:
        return None
    from pydantic_core import PydanticCustomError

    from rung.errors import excerpt
    from rung_hf.loading import cached_snapshot, hub_offline_by_env

    kind = "any" if what == "tokenizer" else "folder"
    if path_problem(value, kind) is None:
        return existing_path(kind)(value)  # `~` expanded
    if looks_like_path(value) or os.path.exists(os.path.expanduser(value)):
        raise PydanticCustomError("path_not_found", path_problem(value, kind, what=f"a {what} directory"))
    section = field.rsplit(".", 1)[0]
    offline = f"{section}.local_files_only is set" if info.data.get("local_files_only") else (
        "HF_HUB_OFFLINE is set" if hub_offline_by_env() else None)
    marker = "config.json" if what == "model" else "tokenizer_config.json"
    if offline and cached_snapshot(value, info.data.get("revision"), marker) is None:
        raise PydanticCustomError("path_not_found", (
            f"{what} {excerpt(value)} is not in the local cache and the hub cannot be reached ({offline}); "
            f"download it where there is a network or set {field} to a local directory"))
    return value


class HFOptions(HubOptions, SamplingDefaults):
    """Any transformers causal LM: a local directory (config.json + safetensors) or a hub id.

    The training fields (`precision`, `device`, `compile`, `activation_checkpointing`) mean
    the same as for rung's own backends: the torch engine reads them.
    """

    model: str = Field(
        ..., description="a local directory holding config.json and *.safetensors, or a hub id (org/name)"
    )
    tokenizer: str | None = Field(
        None, description="tokenizer directory or hub id, when it is not beside the model"
    )
    dtype: str = Field(
        "auto",
        description="weights dtype: auto (float32 on CPU, the checkpoint's on GPU), float32, bfloat16, float16",
    )
    device: str = Field("auto", description="auto (cuda if there is one, else cpu), cpu, cuda, cuda:1, mps")
    device_map: str | dict[str, Any] | None = Field(
        None, description="spread a model too big for one GPU: 'auto' or a module->device map (needs accelerate)"
    )
    attn_implementation: str | None = Field(
        None, description="sdpa, eager, flash_attention_2 ... (null: transformers' default)"
    )
    chat_template: str | None = Field(None, description="a Jinja chat template replacing the tokenizer's")
    adapter: str | None = Field(None, description="a PEFT adapter directory to load (merged) on the model")

    # generation defaults (a request's own values win)
    max_tokens: int = Field(256, ge=1, description="default new tokens per request")
    temperature: float | None = Field(
        None, ge=0, description="default temperature; 0: greedy; null: the model's generation_config.json"
    )
    top_p: float | None = Field(None, gt=0, le=1, description="default nucleus sampling; null: the model's")
    top_k: int | None = Field(None, ge=0, description="default top-k; null: the model's")
    batch_size: int = Field(16, ge=1, description="most prompts generate_batch decodes together")
    continuous_batching: bool = Field(
        True, description="rung serve decodes requests together in one running batch (decode_slots); "
                          "false: one request at a time"
    )

    # training (read by rung_torch.engine.TorchEngine)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="training autocast: auto picks the fastest safe one for the device"
    )
    compile: bool = Field(False, description="torch.compile the model for training")
    activation_checkpointing: bool = Field(False, description="recompute activations in backward to save memory")
    distributed: Literal["auto", "ddp", "fsdp", "none"] = Field(
        "auto", description="under torchrun: auto (DDP), ddp, or fsdp (shards a model too big for one GPU)"
    )

    @field_validator("model", "tokenizer")
    @classmethod
    def _loadable(cls, value: str | None, info: ValidationInfo) -> str | None:
        what = "tokenizer" if info.field_name == "tokenizer" else "model"
        return local_or_hub(value, info, f"backend.{info.field_name}", what)

    @field_validator("adapter")
    @classmethod
    def _adapter_exists(cls, value: str | None) -> str | None:
        return adapter_folder(value)

    @field_validator("dtype")
    @classmethod
    def _dtype(cls, value: str) -> str:
        key = str(value).strip().lower().removeprefix("torch.")
        if key not in DTYPES:
            raise ValueError(f"unknown dtype '{value}'; use one of: auto, float32, bfloat16, float16")
        return DTYPES[key]


class HFTokenizerOptions(HubOptions):
    """Any Hugging Face tokenizer: a directory (tokenizer.json and its config) or a hub id."""

    path: str = Field(..., description="a directory holding tokenizer.json / tokenizer_config.json, or a hub id")
    chat_template: str | None = Field(None, description="a Jinja chat template replacing the tokenizer's")

    @field_validator("path")
    @classmethod
    def _loadable(cls, value: str, info: ValidationInfo) -> str:
        return local_or_hub(value, info, "tokenizer.path", "tokenizer")

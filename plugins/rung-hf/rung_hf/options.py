"""Options of the `hf` backend and the `hf` tokenizer (pydantic only: nothing heavy here)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from rung.options import Options

#: Accepted spellings of a weights dtype, and the name transformers/torch give each.
DTYPES: dict[str, str] = {
    "auto": "auto",
    "float32": "float32", "fp32": "float32",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float16": "float16", "fp16": "float16", "half": "float16",
}


class HubOptions(Options):
    """Where a model or tokenizer comes from on the Hugging Face hub."""

    revision: str | None = Field(None, description="hub branch, tag or commit (null: main)")
    trust_remote_code: bool = Field(
        False, description="run the model repository's own Python code (only for repositories you trust)"
    )
    local_files_only: bool = Field(
        False, description="never reach the hub: use a local directory or the local cache only"
    )


class HFOptions(HubOptions):
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

    # training (read by rung_torch.engine.TorchEngine)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="training autocast: auto picks the fastest safe one for the device"
    )
    compile: bool = Field(False, description="torch.compile the model for training")
    activation_checkpointing: bool = Field(False, description="recompute activations in backward to save memory")
    distributed: Literal["auto", "ddp", "fsdp", "none"] = Field(
        "auto", description="under torchrun: auto (DDP), ddp, or fsdp (shards a model too big for one GPU)"
    )

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

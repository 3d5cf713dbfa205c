"""Options of the `llamacpp` backend (pydantic only: nothing heavy here)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from rung.options import SamplingDefaults
from rung.paths import existing_path

#: `model`: a .gguf file, or a model folder to export, that exists when the config is validated.
gguf_or_folder = existing_path("any", what="a .gguf file or a model folder")

#: Where llama.cpp's own default context (the model's training context) would allocate a KV
#: cache of many GB (a 128k-token model), the context is this unless `context_length` says more.
DEFAULT_MAX_CONTEXT = 4096


class LlamaCppOptions(SamplingDefaults):
    """A GGUF model run by llama.cpp, or a rung or transformers model folder exported to GGUF
    (`rung export --format gguf`) once and cached beside it.

    `threads` is 1 by default, not llama.cpp's all-cores: the models rung trains are small, and
    on a shared 2-core machine one thread decoded them fastest (measured in this plugin's
    README); a larger model on an idle many-core machine wants more.
    """

    model: str = Field(..., description="a .gguf file, or a rung or transformers model folder (exported and cached)")
    outtype: Literal["f32", "f16", "bf16", "q8_0"] = Field(
        "f32", description="weights type when a folder is exported (f32: the same tokens as rung-torch)")
    threads: int = Field(1, ge=0, description="CPU threads while generating; 0: llama.cpp's default (every core)")
    batch_threads: int | None = Field(None, ge=0, description="CPU threads reading the prompt (null: as threads)")
    context_length: int | None = Field(
        None, ge=1, description=f"context in tokens (n_ctx); null: the model's, at most {DEFAULT_MAX_CONTEXT}")
    batch_size: int = Field(512, ge=1, description="prompt tokens per llama.cpp decode call (n_batch)")
    kv_cache: Literal["auto", "f32", "f16"] = Field(
        "auto", description="KV cache type; auto: f32 for an f32 file (rung-torch's scores), else llama.cpp's f16")
    chat_template: str | None = Field(None, description="a Jinja chat template replacing the model's")
    max_tokens: int = Field(256, ge=1, description="default new tokens per request")
    temperature: float = Field(0.0, ge=0, description="default sampling temperature; 0: greedy")
    top_p: float | None = Field(None, gt=0, le=1, description="default nucleus sampling (null: none)")
    top_k: int | None = Field(None, ge=0, description="default top-k (null or 0: none)")
    seed: int | None = Field(None, description="seed of sampled requests that give none (null: a fresh one each)")

    _model_exists = field_validator("model")(gguf_or_folder)

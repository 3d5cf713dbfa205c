"""Options of the torch backend."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from rung.model_config import PRESETS, LocalModelOptions
from rung.options import SamplingDefaults
from rung.paths import existing_path

#: `model`: a preset, or a checkpoint folder that exists when the config is validated.
model_or_preset = existing_path("folder", what="a checkpoint directory", or_names=PRESETS, names_kind="model preset")
#: `adapter`: a PEFT adapter folder (what a lora run saves).
adapter_folder = existing_path("folder", what="a PEFT adapter directory", marker="adapter_config.json")


class TorchOptions(LocalModelOptions, SamplingDefaults):
    """rung's own model in PyTorch: a preset (new weights) or a checkpoint directory.

    The fields of `LocalModelOptions` are shared with the jax backend, so a config switches
    framework by changing only `backend.name`; these add torch's distributed strategy, the
    generation defaults and the seed of new weights.
    """

    distributed: Literal["auto", "ddp", "fsdp", "none"] = Field(
        "auto", description="under torchrun: ddp (auto) or fsdp (FSDP2, shards the model)"
    )
    max_tokens: int = Field(256, ge=1, description="default new tokens per request")
    temperature: float = Field(0.0, ge=0, description="default sampling temperature; 0: greedy")
    seed: int = Field(0, description="seed of the weights of a new model")
    adapter: str | None = Field(None, description="a PEFT adapter directory to load (merged) on the model")

    # Checked when the config is validated, not after minutes of data preparation.
    _model_exists = field_validator("model")(model_or_preset)
    _adapter_exists = field_validator("adapter")(adapter_folder)

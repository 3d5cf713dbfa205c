"""Options of the torch backend."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rung.model_config import LocalModelOptions


class TorchOptions(LocalModelOptions):
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

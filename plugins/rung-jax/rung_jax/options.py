"""Options of the `jax` backend: rung's shared local-model options plus mesh and multi-host.

A config switches between the torch and jax backends by changing only `backend.name`: every
field here beyond `LocalModelOptions` has a default.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from rung.model_config import PRESETS, LocalModelOptions
from rung.options import Options, SamplingDefaults
from rung.paths import existing_path

#: `model`: a preset, or a checkpoint folder that exists when the config is validated.
model_or_preset = existing_path("folder", what="a checkpoint directory", or_names=PRESETS, names_kind="model preset")


class MeshOptions(Options):
    """Sizes of the device mesh's axes; one of them may be -1 ("all remaining devices")."""

    data: int = Field(-1, description="data-parallel replicas (-1: the devices left over)")
    fsdp: int = Field(1, description="parameter/optimizer-state sharding, batch split too")
    tensor: int = Field(1, description="tensor (model) parallelism inside each layer")


class DistributedOptions(Options):
    """Multi-host: `jax.distributed.initialize` runs before anything touches a device.

    On TPU pods and Slurm clusters leave the three fields empty and set `enabled: true`:
    JAX finds the coordinator itself. Elsewhere name the coordinator, process count and id.
    """

    enabled: bool = Field(False, description="call jax.distributed.initialize (set by any field below)")
    coordinator_address: str | None = Field(None, description="host:port of process 0")
    num_processes: int | None = Field(None, ge=1)
    process_id: int | None = Field(None, ge=0)

    @property
    def wanted(self) -> bool:
        return self.enabled or self.coordinator_address is not None or self.num_processes is not None


class JaxOptions(LocalModelOptions, SamplingDefaults):
    """rung's Llama-style model in JAX (Flax NNX)."""

    mesh: MeshOptions = Field(default_factory=MeshOptions)
    distributed: DistributedOptions = Field(default_factory=DistributedOptions)
    max_tokens: int = Field(256, ge=1, description="default new tokens per request")
    temperature: float = Field(0.0, ge=0, description="default sampling temperature; 0: greedy")
    seed: int = Field(0, description="seed of the weights of a new model")
    continuous_batching: bool = Field(
        True, description="rung serve decodes requests together in one running batch (decode_slots); "
                          "false: one request at a time"
    )

    # Checked when the config is validated, not after minutes of data preparation.
    _model_exists = field_validator("model")(model_or_preset)

"""Weights on disk: safetensors in Hugging Face `LlamaForCausalLM` names, plus config.json.

Flax kernels are [in, out]; torch Linear weights are [out, in]: kernels are transposed on the
way out and back. Never pickle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rung.errors import ConfigError, RungError
from rung.model_config import ModelConfig, read_config_json

WEIGHTS_NAME = "model.safetensors"


def base_params(model: nnx.Module) -> nnx.State:
    """The model's own parameters (LoRA adapters left out)."""
    return nnx.state(model, nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam)))


def hf_name(path: tuple[Any, ...]) -> tuple[str, bool]:
    """The HF tensor name of an NNX parameter path, and whether it is transposed."""
    parts = [str(p) for p in path]
    leaf = parts[-1]
    if leaf == "embedding":
        return ".".join(parts[:-1]) + ".weight", False
    if leaf == "kernel":
        return ".".join(parts[:-1]) + ".weight", True
    return ".".join(parts), False


def host_array(value: jax.Array) -> np.ndarray:
    """The whole array on this host (gathered from every process when it is sharded across hosts)."""
    if isinstance(value, jax.Array) and not value.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(value, tiled=True))
    return np.asarray(jax.device_get(value))


def to_hf_tensors(model: nnx.Module) -> dict[str, np.ndarray]:
    """name -> fp32 numpy array (torch layout) of every base parameter."""
    out: dict[str, np.ndarray] = {}
    for path, var in nnx.to_flat_state(base_params(model)):
        name, transpose = hf_name(path)
        array = np.asarray(host_array(var.get_value()), dtype=np.float32)
        out[name] = np.ascontiguousarray(array.T if transpose else array)
    return out


def save_model(model: nnx.Module, directory: str | Path) -> None:
    """model.safetensors + config.json (LlamaForCausalLM) in `directory`. The causal LM only, as
    rung-torch saves it: a score head is saved by `rung_jax.scoring.save_scorer`."""
    from safetensors.numpy import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = to_hf_tensors(model)
    tensors.pop("score.weight", None)
    if jax.process_index() == 0:
        tmp = directory / (WEIGHTS_NAME + ".tmp")
        save_file(tensors, str(tmp), metadata={"format": "pt"})
        tmp.replace(directory / WEIGHTS_NAME)  # atomic: a reader never sees half a file
        model.config.save(directory)


def read_safetensors(directory: str | Path) -> dict[str, np.ndarray]:
    """Every tensor of the checkpoint's safetensors file(s), as fp32 numpy arrays."""
    from safetensors import safe_open

    files = sorted(p for p in Path(directory).glob("*.safetensors") if p.name != "adapter_model.safetensors")
    if not files:
        raise RungError(f"no *.safetensors weights in {directory} (rung never loads pickled weights)")
    tensors: dict[str, np.ndarray] = {}
    for file in files:
        try:
            with safe_open(str(file), framework="flax") as f:
                for name in f.keys():
                    tensors[name] = np.asarray(f.get_tensor(name).astype(jnp.float32))
        except Exception as exc:  # safetensors' own errors: a damaged or foreign file, said in one line
            raise RungError(f"{file}: not a readable safetensors file ({exc})") from None
    return tensors


def load_tensors(model: nnx.Module, tensors: dict[str, np.ndarray], source: str = "checkpoint") -> None:
    """Copy HF-named tensors into the model's parameters (shapes checked, kernels transposed)."""
    state = base_params(model)
    flat = nnx.to_flat_state(state)
    missing = []
    for path, var in flat:
        name, transpose = hf_name(path)
        if name not in tensors:
            missing.append(name)
            continue
        value = tensors[name].T if transpose else tensors[name]
        if tuple(value.shape) != tuple(var.get_value().shape):
            raise RungError(f"{source}: {name} has shape {tuple(tensors[name].shape)}, the model expects "
                            f"{tuple(var.get_value().shape[::-1] if transpose else var.get_value().shape)}")
        var.set_value(jnp.asarray(value, dtype=var.get_value().dtype))
    if missing:
        raise RungError(f"{source}: missing weights {', '.join(missing[:4])}"
                        + (f" and {len(missing) - 4} more" if len(missing) > 4 else ""))
    nnx.update(model, nnx.from_flat_state(flat))


def load_model(directory: str | Path, config: ModelConfig | None = None) -> nnx.Module:
    """A model from a checkpoint directory (config.json + safetensors).

    A `score.weight` in the weights (a sequence classifier saved by `save_scorer`, by
    transformers or by rung-torch; or a model saved with its head) gives the model its score
    head back. A classifier folder has no `lm_head.weight`: an untied model then gets a zero
    output head (it scores; its next-token logits are uniform).
    """
    from rung_jax.model import Llama
    from rung_jax.scoring import attach_score_head, is_classifier

    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise ConfigError(f"backend.model: {directory} has no config.json: not a model checkpoint")
    # The reader rung-torch uses too: a config.json that is not JSON, not an object, another
    # model type or a bad field is one line naming the file and the config.json key.
    hf = read_config_json(directory)
    config = config or ModelConfig.from_hf(hf, source=str(directory / "config.json"))
    model = nnx.eval_shape(lambda: Llama(config, rngs=nnx.Rngs(0)))
    tensors = read_safetensors(directory)
    if "score.weight" in tensors:
        attach_score_head(model)
    if is_classifier(hf) and not config.tie_embeddings and "lm_head.weight" not in tensors:
        tensors["lm_head.weight"] = np.zeros((config.vocab_size, config.dim), np.float32)
    # eval_shape leaves ShapeDtypeStructs: give every parameter a real array first.
    for _, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        var.set_value(jnp.zeros(var.get_value().shape, var.get_value().dtype))
    load_tensors(model, tensors, source=str(directory))
    return model

"""Checkpoints as transformers writes them: `model.safetensors` plus `config.json`.

Parameter names are `LlamaForCausalLM`'s; `lm_head.weight` is left out when the embeddings
are tied, and a score head is not saved here (`rung_torch.scoring.save_scorer` writes the
sequence classifier; `load_model` reads either). Loading reads safetensors only (one file, or shards listed in
`model.safetensors.index.json`), never pickle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from rung.errors import RungError
from rung.model_config import ModelConfig, read_json_object

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"


def save_weights(model: Any, directory: str | Path) -> Path:
    """Write `model`'s weights (fp32 or as they are) and config.json to `directory`."""
    from safetensors.torch import save_file

    from rung_torch.modeling import unwrap

    model = unwrap(model)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    if model.config.tie_embeddings:
        state.pop("lm_head.weight", None)
    # The causal LM as transformers reads it: a score head is saved by `scoring.save_scorer`.
    state.pop("score.weight", None)
    # FSDP2 shards parameters as DTensors: gather each whole (every rank must take part).
    tensors = {
        name: (t.full_tensor() if hasattr(t, "full_tensor") else t).detach().to("cpu").contiguous()
        for name, t in state.items()
    }
    if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_rank():
        return directory / WEIGHTS_NAME  # rank 0 writes
    tmp = directory / (WEIGHTS_NAME + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    tmp.replace(directory / WEIGHTS_NAME)
    model.config.save(directory)
    return directory / WEIGHTS_NAME


def read_state_dict(directory: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of the safetensors checkpoint in `directory` (sharded or not), on the CPU."""
    from safetensors.torch import load_file

    directory = Path(directory)
    single, index = directory / WEIGHTS_NAME, directory / INDEX_NAME
    if single.is_file():
        files = [single]
    elif index.is_file():
        weight_map = read_json_object(index, "weight file names").get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(name, str) for name in weight_map.values()):
            raise RungError(f"{index}: no 'weight_map' of tensor names to file names")
        files = [directory / name for name in sorted(set(weight_map.values()))]
    else:
        found = sorted(p.name for p in directory.glob("*.bin")) + sorted(p.name for p in directory.glob("*.pt"))
        extra = f" (found {', '.join(found)}: pickle files are never loaded)" if found else ""
        raise RungError(f"{directory}: no {WEIGHTS_NAME} or {INDEX_NAME}{extra}")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            state.update(load_file(str(file)))
        except Exception as exc:
            raise RungError(f"{file}: not a readable safetensors file ({exc})") from None
    return state


def load_into(model: Any, state: dict[str, torch.Tensor], where: str = "checkpoint") -> None:
    """Copy `state` into `model`, casting dtypes; missing or unexpected names are an error."""
    tied = model.config.tie_embeddings
    state = dict(state)
    if tied:
        state.pop("lm_head.weight", None)
    expected = set(model.state_dict())
    if tied:
        expected.discard("lm_head.weight")
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:4])}{' ...' if len(unexpected) > 4 else ''}")
        raise RungError(f"{where}: weights do not match the architecture in config.json ({'; '.join(parts)})")
    params = model.state_dict()
    with torch.no_grad():
        for name, tensor in state.items():
            target = params[name]
            if target.shape != tensor.shape:
                raise RungError(
                    f"{where}: {name} has shape {tuple(tensor.shape)}, config.json says {tuple(target.shape)}"
                )
            target.copy_(tensor.to(target.dtype))


def load_model(directory: str | Path, device: str | torch.device = "cpu") -> Any:
    """A `Transformer` with the config.json and safetensors weights of `directory`."""
    from rung_torch.model import Transformer

    directory = Path(directory)
    # One reader for both backends: a config.json that is not JSON, not an object, another
    # model type or a bad field is one line naming the file and the config.json key.
    config = ModelConfig.load(directory)
    # Built on the CPU, not under `with torch.device(...)`: that context imports torch._dynamo (~5 s).
    model = Transformer(config, seed=None, init=False)
    state = read_state_dict(directory)
    score = state.pop("score.weight", None)
    if score is not None:  # a sequence classifier (`scoring.save_scorer`): its head comes back
        from rung_torch.scoring import attach_score_head

        attach_score_head(model, score)
        if not config.tie_embeddings and "lm_head.weight" not in state:
            state["lm_head.weight"] = torch.zeros(config.vocab_size, config.dim)  # a scorer has none
        state["score.weight"] = score
    load_into(model, state, where=str(directory))
    return model.to(device)

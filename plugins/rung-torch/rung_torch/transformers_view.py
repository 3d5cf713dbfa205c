"""A transformers Llama-style model seen as rung's `Transformer`, for rung's fast decoder.

rung's `Transformer` uses transformers' Llama names for its modules (`model.layers[i].self_attn.q_proj`,
`mlp.gate_proj`, `input_layernorm`, ... `lm_head`), so a `LlamaForCausalLM` (or a Qwen3 without
biases or a sliding window) whose config `ModelConfig.from_hf` accepts is the same network. `view(model)` builds
that `Transformer` around the transformers model's own Parameter objects (no copy: an optimizer
step on the transformers model is a step of the view, and `FastForward` sees the new versions),
so `sample_tokens` decodes it with rung's batched KV-cache decoder instead of `generate`.

Only a model that is exactly that network gets a view: plain `nn.Linear` projections (no
peft adapters, no quantised layers), no parameter the view would not hold (biases, a
score head under `model.`), SiLU, unscaled rotary positions. Anything else is None and
keeps transformers' own `generate`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

VIEW = "_rung_transformer_view"


def view(model: Any) -> Any | None:
    """rung's `Transformer` over `model`'s parameters, or None (see the module docstring);
    kept on the model, and built again when a parameter was replaced or moved to another device."""
    cached = model.__dict__.get(VIEW)
    if cached is False:
        return None
    if cached is not None and _current(cached, model):
        return cached
    built = _build(model)
    model.__dict__[VIEW] = built if built is not None else False
    return built


def built_view(model: Any) -> Any | None:
    """The view `view(model)` built last, if any (nothing is built here)."""
    return model.__dict__.get(VIEW) or None


def _current(built: Any, model: Any) -> bool:
    """Whether the view still holds `model`'s parameter objects, on their device."""
    if built.rope_cos.device != model.lm_head.weight.device:
        return False
    return all(model.get_parameter(name) is p for name, p in built.named_parameters(remove_duplicate=False))


def _build(model: Any) -> Any | None:
    from rung.errors import ConfigError
    from rung.model_config import ModelConfig

    from rung_torch.model import Transformer, rotary_tables

    hf_config = getattr(model, "config", None)
    to_dict = getattr(hf_config, "to_dict", None)
    if not callable(to_dict) or not isinstance(getattr(model, "lm_head", None), nn.Linear):
        return None
    settings = to_dict()
    if settings.get("hidden_act", "silu") != "silu" or (settings.get("pretraining_tp") or 1) != 1:
        return None
    if settings.get("attention_bias") or settings.get("mlp_bias"):
        return None
    try:
        config = ModelConfig.from_hf(settings, source="the transformers model's config")
    except ConfigError:
        return None
    with torch.device("meta"):  # no memory of its own: every parameter is the transformers model's
        ours = Transformer(config, init=False)
    theirs = dict(model.named_parameters(remove_duplicate=False))
    wanted = dict(ours.named_parameters(remove_duplicate=False))
    held = {name for name in theirs if name.startswith("model.") or name == "lm_head.weight"}
    if held != set(wanted) or any(theirs[n].shape != p.shape for n, p in wanted.items()):
        return None
    for name, module in model.named_modules():
        if name.startswith("model.layers.") and isinstance(module, nn.Linear) and type(module) is not nn.Linear:
            return None  # a wrapped projection (an adapter, a quantised layer): its forward is not W x
    for name in wanted:
        owner_name, _, leaf = name.rpartition(".")
        setattr(ours.get_submodule(owner_name), leaf, theirs[name])
    cos, sin = rotary_tables(config.head_dim, config.max_seq_len, config.rope_theta)
    device = model.lm_head.weight.device
    ours.rope_cos, ours.rope_sin = cos.to(device), sin.to(device)
    return ours

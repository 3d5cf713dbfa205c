"""What is exported: a Llama model folder's architecture (checked) and its weights, read with numpy.

rung-torch and rung-jax save `LlamaForCausalLM`'s config.json and parameter names, so their
folders and transformers' Llama folders are read the same way. Anything llama.cpp's `llama`
architecture would run differently from the original is refused here, in one line.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rung.errors import ConfigError

WHERE = "export --format gguf"


@dataclass(frozen=True)
class LlamaShape:
    """The numbers llama.cpp's `llama` architecture reads from the file's metadata."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    context_length: int
    rope_theta: float
    rms_norm_eps: float
    tie_embeddings: bool
    bos_token_id: int | None
    eos_token_id: int | None


def refuse(source: Path, why: str) -> ConfigError:
    """The one-line error for a model that cannot become a `llama` GGUF file."""
    return ConfigError(f"{WHERE}: {source} cannot be exported: {why}")


def read_llama_config(source: Path) -> LlamaShape:
    """config.json of a Llama model folder, refusing what llama.cpp's `llama` would not reproduce."""
    file = source / "config.json"
    if not file.is_file():
        raise refuse(source, "no config.json (a rung or transformers model folder has one)")
    try:
        hf: dict[str, Any] = json.loads(file.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ConfigError(f"{WHERE}: {file}: not valid JSON ({exc})") from None
    hf = {**hf, **(hf.get("text_config") or {})}
    model_type = hf.get("model_type")
    architectures = hf.get("architectures") or ["LlamaForCausalLM"]
    if model_type != "llama" or "LlamaForCausalLM" not in architectures:
        raise refuse(source, f"it is a '{model_type}' model ({', '.join(map(str, architectures))}); "
                             "only Llama-architecture causal LMs (LlamaForCausalLM) are exported")
    for key in ("rope_scaling", "rope_parameters"):
        rope = hf.get(key) or {}
        kind = rope.get("rope_type") or rope.get("type")
        if kind not in (None, "default"):
            raise refuse(source, f"config.json {key} scales rotary positions ('{kind}'), which is not exported")
    if hf.get("sliding_window"):
        raise refuse(source, f"config.json has sliding-window attention ({hf['sliding_window']}), "
                             "which llama.cpp's llama architecture does not apply")
    if hf.get("attention_bias") or hf.get("mlp_bias"):
        raise refuse(source, "config.json has attention or MLP biases, which llama.cpp's llama files do not carry")
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise refuse(source, f"config.json hidden_act is '{act}'; llama.cpp's llama uses silu")
    try:
        heads = int(hf["num_attention_heads"])
        hidden = int(hf["hidden_size"])
        rope_theta = hf.get("rope_theta") or (hf.get("rope_parameters") or {}).get("rope_theta") or 10000.0
        return LlamaShape(
            vocab_size=int(hf["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(hf["intermediate_size"]),
            num_layers=int(hf["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(hf.get("num_key_value_heads") or heads),
            head_dim=int(hf.get("head_dim") or hidden // heads),
            context_length=int(hf.get("max_position_embeddings", 2048)),
            rope_theta=float(rope_theta),
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            bos_token_id=_single_id(hf.get("bos_token_id")),
            eos_token_id=_single_id(hf.get("eos_token_id")),
        )
    except KeyError as exc:
        raise ConfigError(f"{WHERE}: {file}: no {exc} field (is it a Llama config.json?)") from None


def _single_id(value: Any) -> int | None:
    if isinstance(value, list):
        value = value[0] if value else None
    return int(value) if isinstance(value, int) else None


# -- safetensors, read with numpy (bf16 too, which numpy has no dtype for)

_DTYPES = {"F32": ("<f4", 4), "F16": ("<f2", 2), "BF16": ("<u2", 2), "F64": ("<f8", 8)}


def read_weights(source: Path) -> dict[str, Any]:
    """Every tensor of the folder's safetensors checkpoint (one file or shards) as float32 arrays."""
    single, index = source / "model.safetensors", source / "model.safetensors.index.json"
    if single.is_file():
        files = [single]
    elif index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        files = [source / name for name in sorted(set(weight_map.values()))]
    else:
        pickles = sorted(p.name for p in source.glob("*.bin"))
        extra = f" (found {', '.join(pickles)}: pickle files are never read)" if pickles else ""
        raise refuse(source, f"no model.safetensors or model.safetensors.index.json{extra}")
    tensors: dict[str, Any] = {}
    for file in files:
        tensors.update(_read_safetensors(file))
    return tensors


def _read_safetensors(file: Path) -> dict[str, Any]:
    import numpy as np

    data = np.memmap(file, dtype=np.uint8, mode="r")
    try:
        (header_len,) = struct.unpack("<Q", bytes(data[:8]))
        header = json.loads(bytes(data[8:8 + header_len]).decode("utf-8"))
    except (struct.error, ValueError, UnicodeDecodeError):
        raise ConfigError(f"{WHERE}: {file}: not a safetensors file") from None
    start = 8 + header_len
    out: dict[str, Any] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _DTYPES:
            raise ConfigError(f"{WHERE}: {file}: tensor {name} is {info['dtype']}; float weights are exported")
        dtype, _ = _DTYPES[info["dtype"]]
        begin, end = info["data_offsets"]
        raw = np.frombuffer(data[start + begin:start + end], dtype=dtype).reshape(info["shape"])
        if info["dtype"] == "BF16":  # bf16 is the top half of a float32
            raw = (raw.astype(np.uint32) << 16).view(np.float32)
        out[name] = np.asarray(raw, dtype=np.float32)
    return out

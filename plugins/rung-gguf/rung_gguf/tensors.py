"""The weights in llama.cpp's names, layout and types.

Two things differ from transformers' Llama besides the names:

- rotary positions: transformers rotates the two halves of each head's query/key vector
  ("rotate half": element i pairs with i + d/2); llama.cpp's `llama` rotates neighbours
  (element 2i pairs with 2i+1). So the rows of each head of q_proj and k_proj are reordered
  from [x0..x(d/2-1), y0..y(d/2-1)] to [x0, y0, x1, y1, ...], which gives the same attention.
- types: norms (1-D) stay f32; 2-D weights take the chosen type. q8_0 stores blocks of 32
  values along a row; a row not a multiple of 32 long is written as f16 instead.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rung_gguf.source import LlamaShape, refuse

_GLOBAL = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
_PER_LAYER = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)")
_IGNORED = re.compile(r".*rotary_emb\.inv_freq$")  # a buffer older checkpoints saved


def gguf_name(name: str) -> str | None:
    """llama.cpp's name of a transformers Llama tensor; None for one llama.cpp has no place for."""
    if name in _GLOBAL:
        return _GLOBAL[name]
    match = _LAYER.fullmatch(name)
    if match and match.group(2) in _PER_LAYER:
        return f"blk.{match.group(1)}.{_PER_LAYER[match.group(2)]}"
    return None


def interleave_rotary_halves(weight: Any, heads: int) -> Any:
    """Reorder each head's output rows from rotate-half pairs (i, i+d/2) to neighbour pairs (2i, 2i+1)."""
    rows, cols = weight.shape
    half = rows // heads // 2
    return weight.reshape(heads, 2, half, cols).transpose(0, 2, 1, 3).reshape(rows, cols)


def llama_tensors(source: Path, shape: LlamaShape, weights: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """(gguf name, float32 array) of every tensor the file holds, in llama.cpp's layout; refuses a
    tensor it has no place for, a missing one, or a shape config.json does not describe."""
    weights = {k: v for k, v in weights.items() if not _IGNORED.match(k)}
    if shape.tie_embeddings:
        weights.pop("lm_head.weight", None)  # llama.cpp reuses token_embd when output.weight is absent
    elif "lm_head.weight" not in weights:
        raise refuse(source, "config.json says the embeddings are not tied but there is no lm_head.weight")
    unknown = sorted(k for k in weights if gguf_name(k) is None)
    if unknown:
        raise refuse(source, f"tensors llama.cpp's llama has no place for: {', '.join(unknown[:4])}"
                             f"{' ...' if len(unknown) > 4 else ''}")
    expected = _expected_shapes(shape)
    missing = sorted(set(expected) - set(weights))
    if missing:
        raise refuse(source, f"missing tensors {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}")
    for name in sorted(weights, key=_order):
        array = weights[name]
        if tuple(array.shape) != expected[name]:
            raise refuse(source, f"{name} has shape {tuple(array.shape)}, config.json says {expected[name]}")
        if name.endswith("q_proj.weight"):
            array = interleave_rotary_halves(array, shape.num_heads)
        elif name.endswith("k_proj.weight"):
            array = interleave_rotary_halves(array, shape.num_kv_heads)
        yield gguf_name(name), array


def _expected_shapes(s: LlamaShape) -> dict[str, tuple[int, ...]]:
    shapes = {"model.embed_tokens.weight": (s.vocab_size, s.hidden_size), "model.norm.weight": (s.hidden_size,)}
    if not s.tie_embeddings:
        shapes["lm_head.weight"] = (s.vocab_size, s.hidden_size)
    for i in range(s.num_layers):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (s.hidden_size,),
            p + "post_attention_layernorm.weight": (s.hidden_size,),
            p + "self_attn.q_proj.weight": (s.num_heads * s.head_dim, s.hidden_size),
            p + "self_attn.k_proj.weight": (s.num_kv_heads * s.head_dim, s.hidden_size),
            p + "self_attn.v_proj.weight": (s.num_kv_heads * s.head_dim, s.hidden_size),
            p + "self_attn.o_proj.weight": (s.hidden_size, s.num_heads * s.head_dim),
            p + "mlp.gate_proj.weight": (s.intermediate_size, s.hidden_size),
            p + "mlp.up_proj.weight": (s.intermediate_size, s.hidden_size),
            p + "mlp.down_proj.weight": (s.hidden_size, s.intermediate_size),
        })
    return shapes


def _order(name: str) -> tuple[int, int, str]:
    """Embeddings first, then the layers in order, then the final norm and head (llama.cpp's order)."""
    match = _LAYER.fullmatch(name)
    if match:
        return (1, int(match.group(1)), name)
    return (0 if "embed" in name else 2, 0, name)


def encoded(array: Any, outtype: str) -> tuple[Any, Any]:
    """(data, GGMLQuantizationType) of one tensor in the chosen type (norms always f32)."""
    import numpy as np
    from gguf import GGMLQuantizationType as Q
    from gguf import quants

    if array.ndim == 1 or outtype == "f32":
        return array.astype(np.float32), Q.F32
    if outtype == "q8_0" and array.shape[-1] % 32 == 0:
        return quants.quantize(array, Q.Q8_0), Q.Q8_0
    if outtype == "bf16":
        return quants.quantize(array, Q.BF16), Q.BF16
    return array.astype(np.float16), Q.F16


def file_type(outtype: str) -> int:
    """general.file_type: llama.cpp's name for what most of the weights are."""
    from gguf import LlamaFileType

    return {"f32": LlamaFileType.ALL_F32, "f16": LlamaFileType.MOSTLY_F16, "bf16": LlamaFileType.MOSTLY_BF16,
            "q8_0": LlamaFileType.MOSTLY_Q8_0}[outtype]

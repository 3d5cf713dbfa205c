"""rung's decoder-only transformer in PyTorch, small enough to read in one sitting.

Llama-style: RMSNorm before each block, rotary positions, a SwiGLU MLP, grouped-query
attention through `scaled_dot_product_attention`, no biases, tied or untied embeddings.
Submodules are named like transformers' `LlamaForCausalLM`, so `state_dict()` has exactly
its keys (`model.embed_tokens.weight`, `model.layers.0.self_attn.q_proj.weight`, ...,
`lm_head.weight`) and a checkpoint loads in either. With `config.qk_norm` each attention
also holds `q_norm` and `k_norm` (an RMSNorm over each head's queries and keys, before the
rotary positions): transformers' `Qwen3ForCausalLM`, names and all.

`forward(input_ids)` returns logits (batch, seq, vocab). Generation passes a `KVCache` and
the position to write at; training never does. A reward model or PPO value head adds a scalar
head `score` (`nn.Linear(dim, 1)`, transformers' sequence-classifier name: see
`rung_torch.scoring`), read through `forward(..., output="scores")`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from rung.model_config import ModelConfig

# torch >= 2.5 broadcasts key/value heads inside SDPA; older versions get them repeated.
_SDPA_GQA = "enable_gqa" in (F.scaled_dot_product_attention.__doc__ or "")


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In fp32 whatever the input, as transformers does, then back to the input's dtype.
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rotary_tables(head_dim: int, max_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of every position, (max_len, head_dim), in the "rotate half" layout."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    freqs = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (batch, heads, seq, head_dim) by position; cos/sin broadcast over heads."""
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


@dataclass
class KVCache:
    """Keys and values of every layer, preallocated: (layers, batch, kv_heads, length, head_dim)."""

    k: torch.Tensor
    v: torch.Tensor

    @classmethod
    def allocate(cls, config: ModelConfig, batch: int, length: int, device, dtype) -> "KVCache":
        shape = (config.n_layers, batch, config.kv_heads, length, config.head_dim)
        return cls(torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype))

    @property
    def length(self) -> int:
        return self.k.shape[3]


class Attention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = config.n_heads, config.kv_heads, config.head_dim
        self.q_proj = nn.Linear(config.dim, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(config.dim, self.n_kv * self.head_dim, bias=False)
        self.v_proj = nn.Linear(config.dim, self.n_kv * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, config.dim, bias=False)
        if config.qk_norm:  # bounds the attention logits: a higher learning rate stays stable
            self.q_norm = RMSNorm(self.head_dim, config.norm_eps)
            self.k_norm = RMSNorm(self.head_dim, config.norm_eps)

    def forward(self, x, cos, sin, mask=None, cache=None, start: int = 0):
        """`mask` (batch, 1, q, k) bool, True = may attend; None = causal (or all, for one query)."""
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim)
        k = self.k_proj(x).view(B, T, self.n_kv, self.head_dim)
        if "q_norm" in self._modules:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            k_cache, v_cache = cache
            k_cache[:, :, start:start + T] = k
            v_cache[:, :, start:start + T] = v
            k, v = k_cache[:, :, :start + T], v_cache[:, :, :start + T]
        group = self.n_heads // self.n_kv
        if mask is not None and not isinstance(mask, torch.Tensor):
            y = mask.attend(q, k, v)  # block-wise (rung_torch.shared_attention)
        elif T == 1 and group > 1:
            # One query per sequence (decoding): fold the heads that share a key/value head into
            # the query axis, so no key or value is copied.
            y = F.scaled_dot_product_attention(q.view(B, self.n_kv, group, self.head_dim), k, v, attn_mask=mask)
            y = y.view(B, self.n_heads, 1, self.head_dim)
        else:
            causal = mask is None and T > 1
            if group > 1 and not _SDPA_GQA:
                k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
            elif group > 1:
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=True)
            else:
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.dim, config.mlp_dim, bias=False)
        self.up_proj = nn.Linear(config.dim, config.mlp_dim, bias=False)
        self.down_proj = nn.Linear(config.mlp_dim, config.dim, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.dim, config.norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.dim, config.norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, mask=None, cache=None, start: int = 0):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, start)
        return x + self.mlp(self.post_attention_layernorm(x))


class Decoder(nn.Module):
    """The stack without the output head (transformers' `LlamaModel`, named `model`)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)


class Transformer(nn.Module):
    """The whole language model: `Transformer(config)(input_ids) -> logits`."""

    def __init__(self, config: ModelConfig, seed: int | None = 0, init: bool = True) -> None:
        super().__init__()
        self.config = config
        self.model = Decoder(config)
        self.lm_head = nn.Linear(config.dim, config.vocab_size, bias=False)
        self.tie_weights()
        # Rotary tables are recomputed, never saved (transformers does not save them either).
        cos, sin = rotary_tables(config.head_dim, config.max_seq_len, config.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        # Set by the engine: recompute each block's activations in the backward pass.
        self.activation_checkpointing = False
        if init:  # init=False: the weights will be loaded (`rung_torch.weights.load_model`)
            self.init_weights(seed)

    # -- construction

    @torch.no_grad()
    def init_weights(self, seed: int | None = 0) -> None:
        """Normal(0, init_std) weights, residual outputs scaled by 1/sqrt(2 * layers) (GPT-2)."""
        generator = None
        if seed is not None:
            generator = torch.Generator(device=self.lm_head.weight.device).manual_seed(seed)
        std = self.config.init_std
        residual_std = std / math.sqrt(2 * self.config.n_layers)
        for name, p in self.named_parameters():
            if name.endswith(("layernorm.weight", "q_norm.weight", "k_norm.weight")) or name == "model.norm.weight":
                p.fill_(1.0)
            elif name.endswith(("o_proj.weight", "down_proj.weight")):
                p.normal_(0.0, residual_std, generator=generator)
            else:
                p.normal_(0.0, std, generator=generator)

    def tie_weights(self) -> None:
        """Share the input embedding with the output head when the config ties them."""
        if self.config.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # -- the forward pass

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
        start: int = 0,
        last_only: bool = False,
        output: str = "logits",
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits (batch, seq, vocab) of `input_ids` (batch, seq).

        `attention_mask` (batch, seq) marks real tokens with 1 and padding with 0 (or, with a
        `cache`, (batch, start + seq) over every cached position; or a ready boolean mask
        (batch, 1, seq, start + seq), True where a query may look, or additive: 0 or -inf). `position_ids` default to
        `start + arange(seq)`. With a `cache`, keys and values are written at `start`.
        `last_only` computes the logits of the last position only.

        `output` picks what comes out of the final norm's hidden states (batch, seq, dim):
        "logits" (the default), "hidden" (the states themselves), "scores" (the score head,
        batch x seq, in the head's dtype: `rung_torch.scoring`) or "logits_and_scores" (both,
        from one pass). Asking through `forward` keeps DDP, FSDP and peft wrappers in the call.
        """
        B, T = input_ids.shape
        end = start + T
        if end > self.config.max_seq_len:
            from rung.errors import RungError

            raise RungError(
                f"sequence of {end} tokens is longer than the model's context of {self.config.max_seq_len}"
            )
        if position_ids is None:
            cos, sin = self.rope_cos[start:end], self.rope_sin[start:end]
        else:
            cos, sin = self.rope_cos[position_ids].unsqueeze(1), self.rope_sin[position_ids].unsqueeze(1)
        if attention_mask is not None and not isinstance(attention_mask, torch.Tensor):
            mask = attention_mask  # attends by itself: rung_torch.shared_attention.SharedPromptAttention
        elif attention_mask is not None and attention_mask.dim() == 4:
            # already (batch, 1, T, start + T): bool (True = may attend) or additive float
            mask = attention_mask if attention_mask.is_floating_point() else attention_mask.to(torch.bool)
        elif attention_mask is not None or (start and T > 1):
            mask = self._mask(attention_mask, T, start)
        else:
            mask = None

        x = self.model.embed_tokens(input_ids)
        for i, layer in enumerate(self.model.layers):
            layer_cache = (cache.k[i], cache.v[i]) if cache is not None else None
            if self.activation_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(layer, x, cos, sin, mask, layer_cache, start, use_reentrant=False)
            else:
                x = layer(x, cos, sin, mask, layer_cache, start)
        if last_only:
            x = x[:, -1:]
        hidden = self.model.norm(x)
        if output == "logits":
            return self.lm_head(hidden)
        if output == "hidden":
            return hidden
        score = getattr(self, "score", None)
        if score is None:
            from rung.errors import RungError

            raise RungError("the model has no score head: add one first (backend.score_heads().add_score_head())")
        scores = score(hidden)[..., 0]
        if output == "scores":
            return scores
        if output == "logits_and_scores":
            return self.lm_head(hidden), scores
        raise ValueError(f"output must be logits, hidden, scores or logits_and_scores, not {output!r}")

    def _mask(self, attention_mask: torch.Tensor | None, T: int, start: int) -> torch.Tensor:
        """(batch or 1, 1, T, start + T) bool: causal, no padded key, each query sees itself."""
        device = self.rope_cos.device
        S = start + T
        query_pos = torch.arange(start, S, device=device)[:, None]
        key_pos = torch.arange(S, device=device)[None, :]
        mask = (key_pos <= query_pos)[None, None]
        if attention_mask is not None:
            keys = attention_mask.to(device=device, dtype=torch.bool)
            if keys.shape[1] == T and start:
                keys = torch.cat([keys.new_ones(keys.shape[0], start), keys], dim=1)
            # A padding query sees itself too, so its row is never empty (no NaN in the cache).
            mask = (mask & keys[:, None, None, :S]) | (key_pos == query_pos)[None, None]
        return mask

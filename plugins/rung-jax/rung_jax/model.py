"""rung's Llama-style decoder in Flax NNX: the same architecture and names as rung-torch.

RMSNorm, rotary positions (Hugging Face Llama's rotate-half convention), SwiGLU MLP,
grouped-query attention, no biases, tied or untied embeddings; with `qk_norm`, an RMSNorm on
each head's queries and keys before the rotary positions (`self_attn.q_norm` / `k_norm`,
transformers' Qwen3). Module paths mirror
`transformers`' `LlamaForCausalLM` (`model.layers.0.self_attn.q_proj.kernel` is
`model.layers.0.self_attn.q_proj.weight` transposed), so weights map one to one.

The model computes in the dtype of its parameters, with norms, softmax and rotary angles in
fp32; the engine gets mixed precision by casting a copy of the fp32 parameters to bf16.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from rung.model_config import ModelConfig

# A KV cache: per layer (keys, values), each [batch, max_len, kv_heads, head_dim].
KVCache = tuple[tuple[jax.Array, jax.Array], ...]


@dataclass(frozen=True)
class Arch:
    """The hashable dimensions a model keeps (its static part under jit)."""

    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    kv_heads: int
    head_dim: int
    mlp_dim: int
    max_seq_len: int
    rope_theta: float
    norm_eps: float
    tie_embeddings: bool
    init_std: float
    qk_norm: bool = False

    @classmethod
    def of(cls, config: ModelConfig) -> "Arch":
        return cls(config.vocab_size, config.dim, config.n_layers, config.n_heads, config.kv_heads,
                   config.head_dim, config.mlp_dim, config.max_seq_len, config.rope_theta,
                   config.norm_eps, config.tie_embeddings, config.init_std, config.qk_norm)


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, eps: float):
        self.weight = nnx.Param(jnp.ones((dim,), jnp.float32))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = x.dtype
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        # Like HF Llama: normalise in fp32, back to the input dtype, then scale.
        return self.weight[...].astype(dtype) * x32.astype(dtype)


def _linear(n_in: int, n_out: int, std: float, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(n_in, n_out, use_bias=False, kernel_init=nnx.initializers.normal(std), rngs=rngs)


def rotary(positions: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """cos and sin [B, T, 1, head_dim] for positions [B, T] (HF Llama's default rope)."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq
    emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]
    return jnp.cos(emb), jnp.sin(emb)


def _rotate_half(x: jax.Array) -> jax.Array:
    half = x.shape[-1] // 2
    return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    return (x32 * cos + _rotate_half(x32) * sin).astype(x.dtype)


class Attention(nnx.Module):
    def __init__(self, arch: Arch, rngs: nnx.Rngs):
        d, hd = arch.dim, arch.head_dim
        out_std = arch.init_std / (2 * arch.n_layers) ** 0.5  # residual outputs, as GPT-2 and rung-torch
        self.q_proj = _linear(d, arch.n_heads * hd, arch.init_std, rngs)
        self.k_proj = _linear(d, arch.kv_heads * hd, arch.init_std, rngs)
        self.v_proj = _linear(d, arch.kv_heads * hd, arch.init_std, rngs)
        self.o_proj = _linear(arch.n_heads * hd, d, out_std, rngs)
        self.n_heads, self.kv_heads, self.head_dim = arch.n_heads, arch.kv_heads, hd
        self.qk_norm = arch.qk_norm
        if arch.qk_norm:
            self.q_norm = RMSNorm(hd, arch.norm_eps)
            self.k_norm = RMSNorm(hd, arch.norm_eps)

    def __call__(self, x, cos, sin, mask, cache=None, index=None):
        b, t, _ = x.shape
        q = self.q_proj(x).reshape(b, t, self.n_heads, self.head_dim)
        k = self.k_proj(x).reshape(b, t, self.kv_heads, self.head_dim)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        v = self.v_proj(x).reshape(b, t, self.kv_heads, self.head_dim)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            k_cache, v_cache = cache
            k = jax.lax.dynamic_update_slice(k_cache, k.astype(k_cache.dtype), (0, index, 0, 0))
            v = jax.lax.dynamic_update_slice(v_cache, v.astype(v_cache.dtype), (0, index, 0, 0))
            cache = (k, v)
            k, v = k.astype(q.dtype), v.astype(q.dtype)
        groups = self.n_heads // self.kv_heads
        q = q.reshape(b, t, self.kv_heads, groups, self.head_dim)
        scores = jnp.einsum("btkgd,bskd->bkgts", q, k).astype(jnp.float32)
        scores = scores * (self.head_dim ** -0.5)
        scores = jnp.where(mask[:, None, None, :, :], scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
        out = jnp.einsum("bkgts,bskd->btkgd", probs, v).reshape(b, t, self.n_heads * self.head_dim)
        return self.o_proj(out), cache


class MLP(nnx.Module):
    def __init__(self, arch: Arch, rngs: nnx.Rngs):
        self.gate_proj = _linear(arch.dim, arch.mlp_dim, arch.init_std, rngs)
        self.up_proj = _linear(arch.dim, arch.mlp_dim, arch.init_std, rngs)
        self.down_proj = _linear(arch.mlp_dim, arch.dim, arch.init_std / (2 * arch.n_layers) ** 0.5, rngs)

    def __call__(self, x):
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nnx.Module):
    def __init__(self, arch: Arch, rngs: nnx.Rngs):
        self.input_layernorm = RMSNorm(arch.dim, arch.norm_eps)
        self.self_attn = Attention(arch, rngs)
        self.post_attention_layernorm = RMSNorm(arch.dim, arch.norm_eps)
        self.mlp = MLP(arch, rngs)

    def __call__(self, x, cos, sin, mask, cache=None, index=None):
        h, cache = self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, index)
        x = x + h
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, cache


class Decoder(nnx.Module):
    """`model.*` in HF names: embeddings, layers, final norm."""

    def __init__(self, arch: Arch, rngs: nnx.Rngs):
        self.embed_tokens = nnx.Embed(arch.vocab_size, arch.dim,
                                      embedding_init=nnx.initializers.normal(arch.init_std), rngs=rngs)
        self.layers = nnx.List([DecoderLayer(arch, rngs) for _ in range(arch.n_layers)])
        self.norm = RMSNorm(arch.dim, arch.norm_eps)


class Llama(nnx.Module):
    """The decoder with its output head: `model(input_ids) -> logits`."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.arch = Arch.of(config)
        self.activation_checkpointing = False  # the engine sets it from the backend's options
        self.model = Decoder(self.arch, rngs)
        if not self.arch.tie_embeddings:
            self.lm_head = _linear(self.arch.dim, self.arch.vocab_size, self.arch.init_std, rngs)

    @property
    def config(self) -> ModelConfig:
        a = self.arch
        return ModelConfig(vocab_size=a.vocab_size, dim=a.dim, n_layers=a.n_layers, n_heads=a.n_heads,
                           n_kv_heads=a.kv_heads, hidden_dim=a.mlp_dim, max_seq_len=a.max_seq_len,
                           rope_theta=a.rope_theta, norm_eps=a.norm_eps,
                           tie_embeddings=a.tie_embeddings, init_std=a.init_std, qk_norm=a.qk_norm)

    def _head(self, x: jax.Array) -> jax.Array:
        if self.arch.tie_embeddings:
            return self.model.embed_tokens.attend(x)
        return self.lm_head(x)

    def output_logits(self, hidden: jax.Array) -> jax.Array:
        """Logits [..., vocab] of final hidden states (`hidden_states`): the output head alone, so
        an objective can pick the positions it needs before the vocabulary projection."""
        return self._head(hidden)

    def _trunk(self, input_ids, positions, mask, cache=None, index=None):
        dtype = self.model.embed_tokens.embedding.dtype
        x = self.model.embed_tokens(input_ids).astype(dtype)
        cos, sin = rotary(positions, self.arch.head_dim, self.arch.rope_theta)
        new_cache = []
        for i, layer in enumerate(self.model.layers):
            if self.activation_checkpointing and cache is None:
                # recompute the layer's activations in the backward pass instead of keeping them
                x, c = nnx.remat(lambda layer, x: layer(x, cos, sin, mask))(layer, x)
            else:
                x, c = layer(x, cos, sin, mask, None if cache is None else cache[i], index)
            new_cache.append(c)
        return self.model.norm(x), tuple(new_cache)

    def hidden_states(self, input_ids: jax.Array, attention_mask: jax.Array | None = None, *,
                      positions: jax.Array | None = None, mask: jax.Array | None = None) -> jax.Array:
        """Final (normed) hidden states [B, T, dim] for token ids [B, T].

        By default causal attention with positions 0..T-1; `attention_mask` [B, T] (1 = real
        token) hides padding keys and counts positions over real tokens only. `positions` [B, T]
        (rotary positions) and `mask` [B, T, T] (bool, True: query i may see key j) replace
        them: a shared-prompt batch (`rung.objectives.shared_prompt_layout`) passes both.
        """
        b, t = input_ids.shape
        keep = None if attention_mask is None else attention_mask.astype(bool)
        if mask is None:
            mask = jnp.tril(jnp.ones((t, t), bool))[None]
            if keep is not None:
                mask = mask & keep[:, None, :]
        if positions is None:
            if keep is not None:
                positions = jnp.maximum(jnp.cumsum(keep, axis=-1) - 1, 0)
            else:
                positions = jnp.broadcast_to(jnp.arange(t), (b, t))
        x, _ = self._trunk(input_ids, positions, mask.astype(bool))
        return x

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None, *,
                 positions: jax.Array | None = None, mask: jax.Array | None = None) -> jax.Array:
        """Logits [B, T, vocab] for token ids [B, T] (causal; `attention_mask` 1 = real token;
        `positions` and `mask` as in `hidden_states`)."""
        return self._head(self.hidden_states(input_ids, attention_mask, positions=positions, mask=mask))

    # -- generation with a KV cache

    def init_cache(self, batch: int, max_len: int, dtype: Any = None) -> KVCache:
        dtype = dtype or self.model.embed_tokens.embedding.dtype
        shape = (batch, max_len, self.arch.kv_heads, self.arch.head_dim)
        return tuple((jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in range(self.arch.n_layers))

    def decode(self, input_ids: jax.Array, cache: KVCache, index: jax.Array,
               offsets: jax.Array | None = None) -> tuple[jax.Array, KVCache]:
        """Run tokens [B, T] at cache columns index..index+T-1 against the cache; logits and new cache.

        `offsets` [B]: left padding, row i's first real column (its columns before that are
        never seen, and its rotary positions count from there); None: every row starts at 0.
        """
        b, t = input_ids.shape
        max_len = cache[0][0].shape[1]
        q_pos = index + jnp.arange(t)
        keys = jnp.arange(max_len)
        mask = (keys[None, :] <= q_pos[:, None])[None]
        if offsets is None:
            positions = jnp.broadcast_to(q_pos, (b, t))
        else:
            mask = mask & (keys[None, None, :] >= offsets[:, None, None])
            positions = jnp.maximum(q_pos[None, :] - offsets[:, None], 0)
        x, cache = self._trunk(input_ids, positions, mask, cache, index)
        return self._head(x), cache


def init_model(config: ModelConfig, seed: int = 0) -> Llama:
    """A new model with random weights, fp32: normal(init_std), residual output projections
    (o_proj, down_proj) scaled by 1/sqrt(2 * layers), norms at one (rung-torch's init)."""
    return Llama(config, rngs=nnx.Rngs(seed))


def forward_logits(model: Llama, input_ids, attention_mask=None) -> jax.Array:
    """Logits of a rung JAX model: the same helper name as rung_torch.modeling's."""
    return model(input_ids, attention_mask)

"""The architecture rung's own models share across frameworks, and its size presets.

rung-torch and rung-jax build the same Llama-style decoder (RMSNorm, rotary positions,
SwiGLU, grouped-query attention, no biases) from a `ModelConfig`, and save it as a Hugging
Face `config.json` for `LlamaForCausalLM`, so either framework and transformers load it.
Pure Python: no framework is imported here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from rung.options import Options


class ModelConfig(Options):
    """Dimensions of a Llama-style decoder-only transformer."""

    vocab_size: int = Field(256, ge=2)
    dim: int = Field(64, ge=8, description="hidden size")
    n_layers: int = Field(2, ge=1)
    n_heads: int = Field(4, ge=1)
    n_kv_heads: int | None = Field(None, ge=1, description="key/value heads; None: n_heads")
    hidden_dim: int | None = Field(None, ge=8, description="MLP width; None: ~8/3 * dim, rounded to 64")
    max_seq_len: int = Field(256, ge=8, description="longest context the model serves")
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    init_std: float = 0.02

    @model_validator(mode="after")
    def _check_heads(self) -> "ModelConfig":
        if self.dim % self.n_heads:
            raise ValueError(f"dim {self.dim} is not divisible by n_heads {self.n_heads}")
        if self.n_heads % self.kv_heads:
            raise ValueError(f"n_heads {self.n_heads} is not divisible by n_kv_heads {self.kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head dimension {self.head_dim} must be even for rotary positions")
        return self

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def mlp_dim(self) -> int:
        if self.hidden_dim:
            return self.hidden_dim
        return 64 * -(-int(8 * self.dim / 3) // 64)

    def num_params(self, embeddings: bool = True) -> int:
        """Parameter count (the input embedding counted once when tied)."""
        attn = self.dim * self.head_dim * (2 * self.n_heads + 2 * self.kv_heads)
        mlp = 3 * self.dim * self.mlp_dim
        per_layer = attn + mlp + 2 * self.dim
        total = self.n_layers * per_layer + self.dim
        if embeddings:
            total += self.vocab_size * self.dim * (1 if self.tie_embeddings else 2)
        elif not self.tie_embeddings:
            total += self.vocab_size * self.dim  # the output head still computes
        return total

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward + backward): 6N plus attention (PaLM appendix B)."""
        seq = seq_len or self.max_seq_len
        n = self.num_params(embeddings=False) + (self.vocab_size * self.dim if self.tie_embeddings else 0)
        return 6 * n + 12 * self.n_layers * self.dim * seq

    # -- Hugging Face config.json (LlamaForCausalLM)

    def to_hf(self) -> dict[str, Any]:
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.dim,
            "intermediate_size": self.mlp_dim,
            "num_hidden_layers": self.n_layers,
            "num_attention_heads": self.n_heads,
            "num_key_value_heads": self.kv_heads,
            "head_dim": self.head_dim,
            "max_position_embeddings": self.max_seq_len,
            "rope_theta": self.rope_theta,
            "rms_norm_eps": self.norm_eps,
            "tie_word_embeddings": self.tie_embeddings,
            "hidden_act": "silu",
            "attention_bias": False,
            "mlp_bias": False,
            "initializer_range": self.init_std,
            "torch_dtype": "float32",
        }

    def to_dict(self) -> dict[str, Any]:
        """The Hugging Face config as a dict: what peft and other HF tools read from `model.config`."""
        return self.to_hf()

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> "ModelConfig":
        rope = hf.get("rope_theta") or (hf.get("rope_parameters") or {}).get("rope_theta", 10000.0)
        return cls(
            vocab_size=hf["vocab_size"],
            dim=hf["hidden_size"],
            n_layers=hf["num_hidden_layers"],
            n_heads=hf["num_attention_heads"],
            n_kv_heads=hf.get("num_key_value_heads"),
            hidden_dim=hf.get("intermediate_size"),
            max_seq_len=hf.get("max_position_embeddings", 2048),
            rope_theta=rope,
            norm_eps=hf.get("rms_norm_eps", 1e-5),
            tie_embeddings=hf.get("tie_word_embeddings", False),
            init_std=hf.get("initializer_range", 0.02),
        )

    def save(self, directory: str | Path) -> None:
        Path(directory, "config.json").write_text(json.dumps(self.to_hf(), indent=2), encoding="utf-8")

    @classmethod
    def load(cls, directory: str | Path) -> "ModelConfig":
        return cls.from_hf(json.loads(Path(directory, "config.json").read_text(encoding="utf-8")))


# Named sizes; vocab_size comes from the tokenizer unless a config sets it.
PRESETS: dict[str, dict[str, Any]] = {
    # ~31k parameters besides embeddings: unit tests (seconds on a CPU)
    "test": dict(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=128),
    # ~0.8M besides embeddings: fast examples on a CPU
    "tiny": dict(dim=128, n_layers=4, n_heads=4, n_kv_heads=2, max_seq_len=256),
    # ~4.4M besides embeddings (~6.5M with an 8k vocabulary): the Level 3 demo on a CPU
    "small": dict(dim=256, n_layers=6, n_heads=8, n_kv_heads=4, max_seq_len=256),
    # ~14M besides embeddings (~17M with an 8k vocabulary)
    "medium": dict(dim=384, n_layers=8, n_heads=6, n_kv_heads=6, max_seq_len=512),
    # GPT-2 small sized: ~124M with a 50k vocabulary (tied)
    "124m": dict(dim=768, n_layers=12, n_heads=12, n_kv_heads=12, hidden_dim=2048, max_seq_len=1024,
                 tie_embeddings=True),
    # ~1.1B with a 50k vocabulary (Llama 3.2 1B shapes)
    "1b": dict(dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, hidden_dim=8192, max_seq_len=2048,
               rope_theta=500000.0, tie_embeddings=True),
}


def preset(name: str, **overrides: Any) -> ModelConfig:
    """A preset's config, with any field overridden."""
    from rung.registry import unknown_name_message

    if name not in PRESETS:
        raise ValueError(unknown_name_message("model preset", name, sorted(PRESETS)))
    return ModelConfig(**{**PRESETS[name], **overrides})


class LocalModelOptions(Options):
    """Options shared by rung's own compute backends (torch, jax): swap `name`, keep the rest.

    `model` is a preset name (a new, randomly initialised model) or a directory holding a
    safetensors checkpoint with its config.json (rung's or a Hugging Face Llama).
    """

    model: str = Field("tiny", description=f"a preset ({', '.join(PRESETS)}) or a checkpoint directory")
    architecture: dict[str, Any] = Field(
        default_factory=dict, description="ModelConfig fields that override the preset's"
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: the fastest safe one for the device"
    )
    device: str = Field("auto", description="auto, cpu, cuda, cuda:1, tpu, ...")
    compile: bool = Field(False, description="torch.compile the model (jax always jits)")
    activation_checkpointing: bool = False

    def resolve_architecture(self, vocab_size: int | None = None) -> ModelConfig:
        """The architecture: from the checkpoint's config.json, or the preset with overrides."""
        if Path(self.model).is_dir():
            return ModelConfig.load(self.model)
        extra = dict(self.architecture)
        if vocab_size is not None and "vocab_size" not in extra:
            extra["vocab_size"] = vocab_size
        return preset(self.model, **extra)

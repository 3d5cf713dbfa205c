"""The architecture rung's own models share across frameworks, and its size presets.

rung-torch and rung-jax build the same Llama-style decoder (RMSNorm, rotary positions,
SwiGLU, grouped-query attention, no biases) from a `ModelConfig`, and save it as a Hugging
Face `config.json` for `LlamaForCausalLM`, so either framework and transformers load it. With
`qk_norm` (an RMSNorm on each head's queries and keys before the rotary positions, weights
`self_attn.q_norm` / `k_norm`) the same decoder is transformers' Qwen3, and is saved as a
`Qwen3ForCausalLM` config.json (Llama has no such norms: it could not load the weights).
Reading a config.json (`read_config_json`, `ModelConfig.load`) and validating fields are done
here once for both: a bad file or value is one ConfigError naming the file and the field as the
user wrote it (`hidden_size` in a config.json, `dim` under `backend.architecture`), never a
pydantic dump of rung's internal names. Pure Python: no framework is imported here.
"""

from __future__ import annotations

import json
from pathlib import Path
from collections.abc import Callable, Mapping
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from rung.errors import ConfigError, excerpt
from rung.options import Options

CONFIG_JSON = "config.json"
# A config.json is a few kilobytes; a bigger one is not what it claims (and is not read whole).
MAX_CONFIG_JSON_BYTES = 4 * 1024 * 1024

# config.json key (transformers' LlamaConfig) -> ModelConfig field it sets.
HF_KEYS: dict[str, str] = {
    "vocab_size": "vocab_size",
    "hidden_size": "dim",
    "num_hidden_layers": "n_layers",
    "num_attention_heads": "n_heads",
    "num_key_value_heads": "n_kv_heads",
    "intermediate_size": "hidden_dim",
    "max_position_embeddings": "max_seq_len",
    "rope_theta": "rope_theta",
    "rms_norm_eps": "norm_eps",
    "tie_word_embeddings": "tie_embeddings",
    "initializer_range": "init_std",
}
HF_REQUIRED = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads")
HF_NAMES: dict[str, str] = {field: key for key, field in HF_KEYS.items()}


class ShapeMismatch(ValueError):
    """Fields that do not fit together, said in whichever names the user wrote them in.

    `template` holds one `{field}` per field involved; `say(names)` fills each with
    "<the user's name> <value>" (pydantic keeps the exception, so the caller can rename)."""

    def __init__(self, template: str, **values: Any) -> None:
        self.template, self.values = template, values
        super().__init__(self.say({}))

    def say(self, names: Mapping[str, str]) -> str:
        return self.template.format(**{f: f"{names.get(f, f)} {v}" for f, v in self.values.items()})


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
    qk_norm: bool = Field(False, description="RMSNorm on each head's queries and keys (saved as a Qwen3 model)")

    @model_validator(mode="after")
    def _check_heads(self) -> "ModelConfig":
        if self.dim % self.n_heads:
            raise ShapeMismatch("{dim} is not divisible by {n_heads}", dim=self.dim, n_heads=self.n_heads)
        if self.n_heads % self.kv_heads:
            raise ShapeMismatch("{n_heads} is not divisible by {n_kv_heads}", n_heads=self.n_heads,
                                n_kv_heads=self.kv_heads)
        if self.head_dim % 2:
            raise ShapeMismatch("the head dimension ({dim} / {n_heads} = %d) must be even for rotary positions"
                                % self.head_dim, dim=self.dim, n_heads=self.n_heads)
        return self

    @classmethod
    def validated(cls, values: Mapping[str, Any], label: Callable[[str | None], str],
                  names: Mapping[str, str] | None = None) -> "ModelConfig":
        """`cls(**values)`, or one ConfigError in the user's terms: `names` maps a field to the
        name the user wrote (a config.json key; a field itself where absent), `label(name)` says
        where that name is (`label(None)`: the place of a problem between fields)."""
        names = names or {}
        try:
            return cls(**values)
        except ValidationError as exc:
            known = [names.get(f, f) for f in cls.model_fields]
            raise ConfigError(describe_invalid(exc, label, names, known)) from None

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
        per_layer = attn + mlp + 2 * self.dim + (2 * self.head_dim if self.qk_norm else 0)
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
        if self.qk_norm:
            return self._to_qwen3()
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

    def _to_qwen3(self) -> dict[str, Any]:
        """transformers' Qwen3 config of the same decoder: Llama's fields, q_norm/k_norm, no sliding window."""
        hf = {key: value for key, value in self.model_copy(update={"qk_norm": False}).to_hf().items()
              if key not in ("mlp_bias",)}
        hf.update(architectures=["Qwen3ForCausalLM"], model_type="qwen3", use_sliding_window=False,
                  sliding_window=None, max_window_layers=self.n_layers, attention_dropout=0.0,
                  layer_types=["full_attention"] * self.n_layers)
        return hf

    def to_dict(self) -> dict[str, Any]:
        """The Hugging Face config as a dict: what peft and other HF tools read from `model.config`."""
        return self.to_hf()

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any], source: str = CONFIG_JSON) -> "ModelConfig":
        """The architecture a Hugging Face Llama config.json describes; anything else (another
        model type, scaled rotary positions, a missing or bad field) is one ConfigError naming
        `source` (the file) and the config.json key."""
        if not isinstance(hf, Mapping):
            raise ConfigError(f"{source}: expected a JSON object of model settings, got {json_type(hf)}")
        model_type = hf.get("model_type", "llama")
        if model_type not in ("llama", "qwen3"):
            raise ConfigError(f"{source}: model_type is {excerpt(model_type)}; rung's torch and jax backends run "
                              "Llama-style models (use the hf backend for other architectures)")
        if model_type == "qwen3" and (hf.get("use_sliding_window") or hf.get("attention_bias")):
            raise ConfigError(f"{source}: this Qwen3 model uses "
                              f"{'a sliding window' if hf.get('use_sliding_window') else 'attention biases'}, "
                              "which rung's model does not; use the hf backend")
        rope_parameters = hf.get("rope_parameters") or {}
        for key, scaling in (("rope_scaling", hf.get("rope_scaling")), ("rope_parameters", rope_parameters)):
            if scaling is None:
                continue
            if not isinstance(scaling, Mapping):
                raise ConfigError(f"{source}: {key}: expected an object, got {json_type(scaling)}")
            kind = scaling.get("rope_type") or scaling.get("type")
            if kind not in (None, "default"):
                raise ConfigError(f"{source}: {key} scales rotary positions ({excerpt(kind)}), which rung's model "
                                  "does not; use the hf backend for this checkpoint")
        missing = [key for key in HF_REQUIRED if key not in hf]
        if missing:
            raise ConfigError(f"{source}: no '{missing[0]}' field (a Llama config.json has "
                              f"{', '.join(HF_REQUIRED)})")
        values = {field: hf[key] for key, field in HF_KEYS.items() if hf.get(key) is not None}
        values.setdefault("max_seq_len", 2048)
        values.setdefault("tie_embeddings", False)  # transformers' LlamaConfig default
        values["qk_norm"] = model_type == "qwen3"
        if "rope_theta" not in values and rope_parameters.get("rope_theta") is not None:
            values["rope_theta"] = rope_parameters["rope_theta"]
        names = {**HF_NAMES, "rope_theta": "rope_theta" if "rope_theta" in hf else "rope_parameters.rope_theta"}
        config = cls.validated(values, lambda name: f"{source}: {name}" if name else source, names)
        head_dim = hf.get("head_dim")
        if head_dim is not None and head_dim != config.head_dim:
            raise ConfigError(f"{source}: head_dim {excerpt(head_dim)} is not hidden_size / num_attention_heads "
                              f"({config.head_dim}), which rung's model requires")
        return config

    def save(self, directory: str | Path) -> None:
        Path(directory, CONFIG_JSON).write_text(json.dumps(self.to_hf(), indent=2), encoding="utf-8")

    @classmethod
    def load(cls, directory: str | Path) -> "ModelConfig":
        """The architecture of the model folder `directory` (its config.json), errors naming the file."""
        return cls.from_hf(read_config_json(directory), source=str(Path(directory, CONFIG_JSON)))


def json_type(value: Any) -> str:
    """What a JSON value is, in JSON's words (for "expected an object, got a list")."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__)


def read_config_json(directory: str | Path) -> dict[str, Any]:
    """The JSON object in `directory`/config.json: what every backend reads a model folder's
    settings with. A missing file is one ConfigError naming the folder, the rest as
    `read_json_object` says."""
    file = Path(directory, CONFIG_JSON)
    if not file.is_file():
        raise ConfigError(f"{directory}: no {CONFIG_JSON} (a rung or Hugging Face model folder has one)")
    return read_json_object(file, "model settings")


def read_json_object(file: str | Path, what: str = "settings") -> dict[str, Any]:
    """The JSON object a small settings file of a model folder holds (config.json, the
    safetensors index). A file too big to be one, bytes that are not UTF-8, text that is not
    JSON (line and column said) or JSON that is not an object is one ConfigError naming it."""
    file = Path(file)
    size = file.stat().st_size
    if size > MAX_CONFIG_JSON_BYTES:
        raise ConfigError(f"{file}: {size} bytes is too big to hold a model's {what} "
                          f"(at most {MAX_CONFIG_JSON_BYTES})")
    raw = file.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"{file}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x}); it should be JSON") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{file}:{exc.lineno}:{exc.colno}: not JSON ({exc.msg})") from None
    except RecursionError:
        raise ConfigError(f"{file}: not {what} (JSON nested too deeply)") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{file}: expected a JSON object of {what}, got {json_type(value)}")
    return value


def describe_invalid(exc: ValidationError, label: Callable[[str | None], str], names: Mapping[str, str],
                     known: list[str]) -> str:
    """The first error of `exc` as one line, fields renamed by `names` (see `ModelConfig.validated`)."""
    error = exc.errors()[0]
    field = str(error["loc"][0]) if error["loc"] else None
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, ShapeMismatch):
        return f"{label(None)}: {cause.say(names)}"
    if field is None:
        return f"{label(None)}: {error['msg'].removeprefix('Value error, ')}"
    name = names.get(field, field)
    if error["type"] == "extra_forbidden":
        import difflib

        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"{label(name)}: not an architecture field{hint}; the fields are {', '.join(known)}"
    message = error["msg"]
    return f"{label(name)}: {message[0].lower()}{message[1:]}, got {excerpt(error.get('input'))}"


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


def preset(name: str, where: str = "architecture", **overrides: Any) -> ModelConfig:
    """A preset's config, with any field overridden; a bad override is one ConfigError naming
    it under `where` (`backend.architecture.dim: ...`)."""
    from rung.registry import unknown_name_message

    if name not in PRESETS:
        raise ValueError(unknown_name_message("model preset", name, sorted(PRESETS)))
    return ModelConfig.validated({**PRESETS[name], **overrides}, lambda field: f"{where}.{field}" if field else where)


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
        return preset(self.model, where="backend.architecture", **extra)

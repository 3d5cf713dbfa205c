"""A scalar head on the jax model, saved as a transformers sequence classifier.

The head is an `nnx.Linear(hidden, 1, use_bias=False)` at the model's attribute `score`, the
name transformers' `LlamaForSequenceClassification` gives it, so its kernel saves as
`score.weight` [1, hidden] beside the model's own weights. It is a plain `nnx.Param`: the
engine trains it with every other weight, and beside LoRA adapters too (the engine's trainable
filter keeps `score` trainable, as peft's `modules_to_save`). The objectives `token_scores`
and `logprobs_and_scores` read it (`rung_jax.objectives`).

`save_scorer` writes the folder `transformers.AutoModelForSequenceClassification` loads
(config.json architectures `LlamaForSequenceClassification`, `num_labels` 1, `pad_token_id`;
model.safetensors with `model.*` and `score.weight`, no `lm_head`: a classifier has none);
loading it with the jax backend (`rung_jax.weights.load_model`) gives the head back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
from flax import nnx

from rung.errors import RungError

HEAD = "score"
CLASSIFIER = "LlamaForSequenceClassification"


def attach_score_head(model: nnx.Module, seed: int = 0) -> nnx.Module:
    """Give `model` a new head at `model.score` (normal(init_std) init, as transformers
    initialises a classifier's head), in the dtype of the model's embeddings; returns it."""
    dtype = model.model.embed_tokens.embedding.dtype
    head = nnx.Linear(model.arch.dim, 1, use_bias=False, param_dtype=dtype,
                      kernel_init=nnx.initializers.normal(model.arch.init_std), rngs=nnx.Rngs(seed))
    setattr(model, HEAD, head)
    return model


def has_score_head(model: nnx.Module) -> bool:
    return isinstance(getattr(model, HEAD, None), nnx.Linear)


def score_of(model: nnx.Module, hidden: jax.Array) -> jax.Array:
    """The head at every position of final hidden states [B, T, D]: [B, T] (the hidden dtype)."""
    if not has_score_head(model):
        raise RungError("the model has no score head: add one (backend.score_heads().add_score_head()) "
                        "or load a folder saved with save_scorer")
    return getattr(model, HEAD)(hidden)[..., 0]


def classifier_config(model: nnx.Module, pad_token_id: int | None) -> dict[str, Any]:
    """config.json of the model as a one-label Llama sequence classifier."""
    config = model.config.to_hf()
    config.update({"architectures": ["Qwen3ForSequenceClassification" if model.config.qk_norm else CLASSIFIER],
                   "num_labels": 1, "id2label": {"0": "LABEL_0"},
                   "label2id": {"LABEL_0": 0}, "pad_token_id": pad_token_id})
    return config


def is_classifier(hf_config: dict[str, Any]) -> bool:
    return any(str(name).endswith("ForSequenceClassification") for name in hf_config.get("architectures") or ())


def save_scorer(model: nnx.Module, directory: str | Path, pad_token_id: int | None) -> None:
    """model.safetensors (`model.*`, `score.weight`) and config.json of a sequence classifier."""
    from safetensors.numpy import save_file

    from rung_jax.weights import WEIGHTS_NAME, to_hf_tensors

    if not has_score_head(model):
        raise RungError("save_scorer: the model has no score head (add_score_head first)")
    tensors = {name: value for name, value in to_hf_tensors(model).items() if not name.startswith("lm_head.")}
    if jax.process_index() == 0:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / (WEIGHTS_NAME + ".tmp")
        save_file(tensors, str(tmp), metadata={"format": "pt"})
        tmp.replace(directory / WEIGHTS_NAME)  # atomic: a reader never sees half a file
        (directory / "config.json").write_text(json.dumps(classifier_config(model, pad_token_id), indent=2),
                                               encoding="utf-8")


class NnxScoreHeads:
    """`rung.interfaces.ScoreHeads` for the jax backend (`backend.score_heads()`)."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend

    def add_score_head(self, seed: int = 0) -> None:
        attach_score_head(self.backend.model, seed)  # a head it had is replaced by the new one

    def has_score_head(self) -> bool:
        return has_score_head(self.backend.model)

    def save_scorer(self, directory: str | Path, pad_token_id: int | None = None) -> None:
        """The classifier folder, with the tokenizer; `pad_token_id` defaults to the tokenizer's pad
        id (transformers reads each row's score at its last token that is not the pad id)."""
        tokenizer = self.backend.tokenizer
        if pad_token_id is None and tokenizer is not None:
            pad_token_id = tokenizer.pad_id
        save_scorer(self.backend.model, directory, pad_token_id)
        if tokenizer is not None and jax.process_index() == 0:
            tokenizer.save(directory)

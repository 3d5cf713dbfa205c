"""Score heads on torch causal LMs: `backend.score_heads()` of the torch and hf backends.

A score head is `nn.Linear(hidden, 1, bias=False)` named `score` on the model itself (rung's
`Transformer` or a transformers causal LM; under peft, on the base model), as transformers'
`...ForSequenceClassification` names it. A reward model reads it at each sequence's last
token, PPO's value head at every token (objectives `token_scores`, `logprobs_and_scores`).

`save_scorer` writes a folder `transformers.AutoModelForSequenceClassification` loads: the
body's weights (`model.*` for Llama, the architecture's own prefix otherwise) and
`score.weight` in safetensors, config.json with the classifier's architecture, `num_labels`
1 and `pad_token_id`; no language-model head. Loading such a folder through the torch or hf
backend gives the model its head back (`weights.load_model`, `rung_hf.loading`); its
language-model head, absent from the folder when untied, is zeros (it scores; it does not
write).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rung.errors import RungError
from rung_torch.modeling import unwrap, weights_changed

SCORE = "score"


def score_owner(model: Any) -> nn.Module:
    """The module that holds (or will hold) `score`: under DDP/compile and peft, the base model."""
    model = unwrap(model)
    if hasattr(model, "get_base_model"):  # peft
        model = unwrap(model.get_base_model())
    return model


def score_head(model: Any) -> nn.Module | None:
    """The model's score head (under peft's `modules_to_save`: its wrapper), or None."""
    head = getattr(score_owner(model), SCORE, None)
    return head if isinstance(head, nn.Module) else None


def is_rung_model(model: Any) -> bool:
    from rung_torch.model import Transformer

    return isinstance(model, Transformer)


def _input_embeddings(owner: nn.Module) -> nn.Module:
    if is_rung_model(owner):
        return owner.model.embed_tokens
    return owner.get_input_embeddings()


def _init_std(owner: nn.Module) -> float:
    config = owner.config
    if is_rung_model(owner):
        return float(config.init_std)
    return float(getattr(config, "initializer_range", None) or 0.02)


def attach_score_head(owner: nn.Module, weight: torch.Tensor | None = None, seed: int = 0) -> nn.Module:
    """Put a trainable `score` on `owner` (a plain model, no wrapper): `weight` (1, hidden) if
    given, else Normal(0, the model's init std) drawn from `seed`, on the embeddings' device
    and in their dtype."""
    embeddings = _input_embeddings(owner).weight
    hidden = embeddings.shape[-1]
    head = nn.Linear(hidden, 1, bias=False, device=embeddings.device, dtype=embeddings.dtype)
    with torch.no_grad():
        if weight is None:
            generator = torch.Generator().manual_seed(int(seed))
            weight = torch.randn(1, hidden, generator=generator) * _init_std(owner)
        if tuple(weight.shape) != (1, hidden):
            raise RungError(f"score.weight has shape {tuple(weight.shape)}; this model's head is (1, {hidden})")
        head.weight.copy_(weight.to(head.weight.dtype))
    head.weight.requires_grad_(True)
    setattr(owner, SCORE, head)
    weights_changed(owner)
    return head


class TorchScoreHeads:
    """`rung.interfaces.ScoreHeads` for a backend whose `.model` is a torch causal LM."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend

    def add_score_head(self, seed: int = 0) -> None:
        attach_score_head(score_owner(self.backend.model), seed=seed)

    def has_score_head(self) -> bool:
        return score_head(self.backend.model) is not None

    def save_scorer(self, directory: str | Path, pad_token_id: int | None = None) -> None:
        save_scorer(self.backend.model, directory, pad_token_id, tokenizer=_tokenizer_saver(self.backend))


def _tokenizer_saver(backend: Any) -> Any:
    hf = getattr(backend, "hf_tokenizer", None)  # rung-hf keeps the transformers tokenizer
    if hf is not None:
        return lambda directory: hf.save_pretrained(str(directory))
    tokenizer = getattr(backend, "tokenizer", None)
    return None if tokenizer is None else tokenizer.save


def plain_model(model: Any) -> nn.Module:
    """`model` without wrappers; with LoRA adapters, a merged copy (the live model is untouched)."""
    model = unwrap(model)
    if hasattr(model, "merge_and_unload"):
        from rung_torch.backend import frozen_copy

        model = frozen_copy(model).merge_and_unload()
    elif hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return unwrap(model)


def sequence_classifier_architecture(model: nn.Module) -> str:
    """transformers' sequence-classifier class for `model`'s architecture."""
    if is_rung_model(model):
        return "Qwen3ForSequenceClassification" if model.config.qk_norm else "LlamaForSequenceClassification"
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES as names

    model_type = getattr(model.config, "model_type", None)
    if model_type not in names:
        raise RungError(f"transformers has no sequence classifier for '{model_type}' models: "
                        "save_scorer cannot write this model as one")
    return names[model_type]


def scorer_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors of the sequence classifier: the body and `score.weight`, no output head."""
    prefix = "model." if is_rung_model(model) else f"{model.base_model_prefix}."
    state = {}
    for name, tensor in model.state_dict().items():
        if name.startswith(prefix) or name == f"{SCORE}.weight":
            tensor = tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor  # FSDP2
            state[name] = tensor.detach().to("cpu").contiguous()
    return state


def save_scorer(model: Any, directory: str | Path, pad_token_id: int | None = None, tokenizer: Any = None) -> Path:
    """Write `model` and its score head to `directory` as a transformers sequence classifier."""
    from safetensors.torch import save_file

    if score_head(model) is None:
        raise RungError("the model has no score head to save (backend.score_heads().add_score_head() adds one)")
    plain = plain_model(model)
    architecture = sequence_classifier_architecture(plain)
    state = scorer_state(plain)
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_rank():
        return Path(directory)  # rank 0 writes (every rank gathered its shards above)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / "model.safetensors.tmp"
    save_file(state, str(tmp), metadata={"format": "pt"})
    tmp.replace(directory / "model.safetensors")
    if is_rung_model(plain):
        config = plain.config.to_hf()
        config.update(architectures=[architecture], num_labels=1, id2label={"0": "LABEL_0"},
                      label2id={"LABEL_0": 0}, pad_token_id=pad_token_id)
        (directory / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    else:  # transformers writes its own config, every field of the architecture kept
        import copy

        hf_config = copy.deepcopy(plain.config)
        hf_config.architectures = [architecture]
        hf_config.num_labels = 1
        if pad_token_id is not None:
            hf_config.pad_token_id = pad_token_id
        hf_config.save_pretrained(str(directory))
    if tokenizer is not None:
        tokenizer(directory)
    return directory


def scorer_weight(state: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """`score.weight` of a checkpoint's tensors (popped), when it has one."""
    return state.pop(f"{SCORE}.weight", None)

"""Options of the preference trainers (reward, dpo), their data, and what every rung-rlhf
trainer shares (pydantic; nothing heavy imported)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from rung.options import Options
from rung.paths import existing_path
from rung.training import TrainingOptions


class AdapterOptions(Options):
    """LoRA adapters through the backend's `adapters()`: only they (and a score head) train."""

    r: int = Field(16, ge=1, description="rank of the adapters")
    alpha: float | None = Field(None, gt=0, description="scaling numerator; None: 2 * r")
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: str | list[str] = Field("auto", description="auto, all-linear, or module names")
    use_rslora: bool = False


class FeedbackOptions(TrainingOptions):
    """What every trainer that learns from feedback shares: formatting, lengths, adapters."""

    learning_rate: float = Field(5e-6, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    chat_template: str = Field(
        "auto", description="auto: the tokenizer's chat template, or chatml when it has none; "
        "'tokenizer', 'chatml', 'plain', or a Jinja template string"
    )
    system_prompt: str | None = Field(None, description="system turn added to prompts that have none")
    max_length: int = Field(512, ge=8, description="tokens per row (prompt and completions): every batch is this long")
    max_prompt_length: int = Field(256, ge=1, description="longer prompts lose their start")
    max_completion_length: int = Field(128, ge=1, description="longer completions lose their end")
    shuffle: bool = True
    eval_size: float = Field(0.1, ge=0, description="held-out examples: a fraction (<1) or a count (>=1)")
    eval_data: dict[str, Any] | None = Field(None, description="a data-source section for held-out examples")
    eval_on_start: bool = Field(True, description="evaluate once before the first step (the 'before' figures)")
    lora: AdapterOptions | None = Field(None, description="train LoRA adapters instead of every weight")


class RewardOptions(FeedbackOptions):
    """A reward model: a score head on the backend's model, Bradley-Terry on preference pairs."""

    learning_rate: float = Field(1e-5, gt=0)
    margin: bool = Field(False, description="subtract each pair's `margin` (its data field) inside the loss")
    head_seed: int | None = Field(None, description="seed of the new score head; None: the run's seed")


class DPOOptions(FeedbackOptions):
    """Direct preference optimisation against the model as it was before training."""

    beta: float = Field(0.1, gt=0, description="strength of the implicit KL to the reference")
    loss_type: Literal["sigmoid", "ipo", "hinge"] = "sigmoid"
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="conservative DPO: assumed label noise")
    layout: Literal["shared", "separate"] = Field(
        "shared", description="shared: prompt, chosen and rejected in one row, the prompt computed once; "
        "separate: one row each for chosen and rejected (as TRL)"
    )


class PreferenceFieldOptions(Options):
    """Which fields of a record hold a preference pair."""

    prompt_field: str = Field("prompt", description="a string, or a list of {role, content} turns")
    chosen_field: str = Field("chosen", description="a string, or a whole conversation ending in the chosen answer")
    rejected_field: str = Field("rejected", description="as chosen_field, for the rejected answer")
    margin_field: str = Field("margin", description="optional: how much better chosen is (reward with margin)")
    system_field: str = "system"
    role_field: str = Field("role", description="key of a turn's role ('from' in ShareGPT data)")
    content_field: str = Field("content", description="key of a turn's text ('value' in ShareGPT data)")
    roles: dict[str, str] = Field(default_factory=dict, description="rename roles, e.g. {human: user, gpt: assistant}")
    limit: int | None = Field(None, ge=1, description="read at most this many pairs")


class PreferenceJsonlOptions(PreferenceFieldOptions):
    """Preference pairs, one JSON object per line."""

    path: str | list[str] = Field(..., description="a JSONL file, a glob, or a list of them")

    # Checked when the config is validated: a missing file is said before any work starts.
    _files_exist = field_validator("path")(existing_path("file", globs=True))


class PreferenceHFOptions(PreferenceFieldOptions):
    """Preference pairs from `datasets.load_dataset` (local files or a dataset directory)."""

    dataset: str = Field(..., description="a builder ('json', 'parquet') with data_files, or a dataset directory")
    data_files: str | list[str] | dict[str, Any] | None = None
    split: str = "train"
    subset: str | None = None

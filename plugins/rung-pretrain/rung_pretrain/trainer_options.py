"""Options of the `pretrain` trainer: light (pydantic only), read when a config is validated."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from rung.training import TrainingOptions

DEFAULT_PROMPTS = ["def", "class", "import"]


class PretrainOptions(TrainingOptions):
    """Next-token prediction on packed token shards, with validation loss and text samples.

    Every `TrainingOptions` field (steps, batch_size, learning_rate, eval_every, save_every,
    resume, ...) applies; these add the shape of the data and what to watch while training.
    """

    optimizer: Literal["adamw", "muon"] = Field(
        "adamw",
        description="adamw; or muon: orthogonalised momentum for the hidden matrices, AdamW for the rest "
                    "(embeddings, head, norms); torch and jax",
    )
    muon_lr: float = Field(0.02, gt=0, description="Muon's peak learning rate (follows learning_rate's schedule)")
    muon_momentum: float = Field(0.95, ge=0, lt=1, description="Muon's (Nesterov) momentum")
    seq_len: int | None = Field(
        None, ge=2, description="tokens per training window; null: the model's max_seq_len"
    )
    sampling: Literal["random", "sequential"] | None = Field(
        None, description="training windows: random positions or consecutive packed windows; null: data.sampling"
    )
    val_batches: int = Field(8, ge=0, description="validation batches per evaluation (0: no validation)")
    val_batch_size: int | None = Field(None, ge=1, description="sequences per validation batch; null: batch_size")
    sample_every: int | None = Field(
        None, ge=1,
        description="steps between text samples (taken at the next evaluation); null: only at the end",
    )
    sample_prompts: list[str] = Field(
        default_factory=lambda: list(DEFAULT_PROMPTS), description="prompts the samples continue"
    )
    sample_tokens: int = Field(64, ge=1, description="new tokens per sample while training")
    final_sample_tokens: int | None = Field(
        None, ge=1, description="new tokens per sample printed at the end; null: sample_tokens"
    )
    sample_temperature: float = Field(0.8, ge=0, description="sampling temperature; 0: greedy")
    sample_top_k: int | None = Field(40, ge=1, description="sample among the k likeliest tokens")
    print_samples: bool = Field(True, description="print the final samples (and write samples.txt)")
    plot: bool = Field(True, description="write loss.png (train and validation loss) to the run folder")

    @field_validator("sample_prompts", mode="before")
    @classmethod
    def _one_prompt(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value

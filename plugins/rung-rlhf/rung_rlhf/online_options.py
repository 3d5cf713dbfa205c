"""Options of the online trainers (grpo, ppo) and their prompt data (pydantic; light)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from rung.options import Options
from rung.paths import existing_path
from rung_rlhf.preference_options import FeedbackOptions


class OnlineOptions(FeedbackOptions):
    """Sampling from the policy being trained, and what scores its completions."""

    learning_rate: float = Field(1e-5, gt=0)
    max_completion_length: int = Field(64, ge=1, description="new tokens sampled per completion")
    temperature: float = Field(1.0, gt=0)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=1)
    rewards: list[dict[str, Any]] = Field(
        default_factory=list, description="reward-function sections ({name: exact_match, ...}), called "
        "fn(completion, reference)"
    )
    reward_weights: list[float] | None = Field(None, description="one weight per reward (and the reward model last)")
    reward_model: dict[str, Any] | None = Field(
        None, description="a backend section ({name: torch, model: out/reward/model}) whose score head "
        "(a `reward` run's output) scores prompt + completion"
    )
    beta: float = Field(0.0, ge=0, description="KL to the reference (the model before training); 0: none")
    epsilon: float = Field(0.2, gt=0, description="clip range of the importance ratio")
    num_iterations: int = Field(1, ge=1, description="optimizer steps on each sampled batch")
    eval_generate: int = Field(64, ge=1, description="held-out prompts answered greedily for eval_reward")


class GRPOOptions(OnlineOptions):
    """Group-relative policy optimisation (DeepSeekMath): G completions per prompt."""

    num_generations: int = Field(8, ge=2, description="G: completions per prompt, compared within their group")
    scale_rewards: bool = Field(True, description="divide advantages by the group's reward std")
    normalize: Literal["token", "sequence"] = Field(
        "token", description="token: loss summed over the batch's completion tokens / their count; "
        "sequence: each completion's token mean, then the mean over completions"
    )
    epsilon_high: float | None = Field(None, gt=0, description="upper clip range (DAPO); None: epsilon")
    layout: Literal["shared", "separate"] = Field(
        "shared", description="shared: a prompt and its G completions in one row; separate: a row each"
    )
    mask_truncated_completions: bool = Field(
        False, description="leave completions cut at max_completion_length (no stop) out of the loss (DAPO)"
    )
    skip_equal_reward_groups: bool = Field(
        True, description="with beta 0 on torch, leave rows whose completions all have advantage 0 (a group "
        "whose rewards are all equal) out of the forward and backward passes: their loss and gradient are "
        "exactly 0, their tokens still count in the normalisation (the same update, less work)"
    )


class PPOOptions(OnlineOptions):
    """PPO with a value head on the policy, per-token KL to the reference, GAE."""

    beta: float = Field(0.05, ge=0, description="per-token KL penalty to the reference in the reward")
    gamma: float = Field(1.0, gt=0, le=1)
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda")
    value_clip: float = Field(0.2, gt=0, description="clip range of the value loss")
    value_coef: float = Field(0.1, ge=0, description="weight of the value loss")
    num_iterations: int = Field(4, ge=1, description="PPO epochs: optimizer steps on each sampled batch")
    whiten_advantages: bool = True


class PromptFieldOptions(Options):
    """Which fields of a record hold a prompt and its reference answer."""

    prompt_field: str = Field("prompt", description="a string, or a list of {role, content} turns")
    reference_field: str = Field("reference", description="optional: the answer a verifiable reward compares with")
    system_field: str = "system"
    limit: int | None = Field(None, ge=1, description="read at most this many prompts")


class PromptsJsonlOptions(PromptFieldOptions):
    """Prompts, one JSON object per line."""

    path: str | list[str] = Field(..., description="a JSONL file, a glob, or a list of them")

    # Checked when the config is validated: a missing file is said before any work starts.
    _files_exist = field_validator("path")(existing_path("file", globs=True))


class PromptsHFOptions(PromptFieldOptions):
    """Prompts from `datasets.load_dataset`."""

    dataset: str = Field(..., description="a builder ('json', 'parquet') with data_files, or a dataset directory")
    data_files: str | list[str] | dict[str, Any] | None = None
    split: str = "train"
    subset: str | None = None

"""Options of rung-lora's trainers and data sources (pydantic; nothing heavy imported)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from rung.options import Options
from rung.paths import existing_path
from rung.training import TrainingOptions


class ChatFieldOptions(Options):
    """Which fields of a record hold the conversation (shared by every chat data source)."""

    format: Literal["auto", "messages", "prompt_completion"] = Field(
        "auto", description="auto: a record with `messages_field` is a chat, else a prompt/completion pair"
    )
    messages_field: str = Field("messages", description="list of {role, content} turns")
    role_field: str = Field("role", description="key of a turn's role ('from' in ShareGPT data)")
    content_field: str = Field("content", description="key of a turn's text ('value' in ShareGPT data)")
    roles: dict[str, str] = Field(
        default_factory=dict,
        description="rename roles, e.g. {human: user, gpt: assistant}; "
        "'human', 'gpt', 'bot', 'model' are known already",
    )
    prompt_field: str = "prompt"
    completion_field: str = "completion"
    system_field: str = Field("system", description="optional system prompt of a record")
    limit: int | None = Field(None, ge=1, description="read at most this many examples")


class ChatJsonlOptions(ChatFieldOptions):
    """Chat examples or prompt/completion pairs, one JSON object per line."""

    path: str | list[str] = Field(..., description="a JSONL file, a glob, or a list of them")

    # Checked when the config is validated: a missing file is said before any work starts.
    _files_exist = field_validator("path")(existing_path("file", globs=True))


class ChatHFOptions(ChatFieldOptions):
    """Chat examples or prompt/completion pairs from `datasets.load_dataset` (local files)."""

    dataset: str = Field(
        ..., description="a builder ('json', 'parquet', 'csv') with data_files, a dataset directory "
        "(load_dataset or save_to_disk), or a hub id where the hub can be reached"
    )
    data_files: str | list[str] | dict[str, Any] | None = None
    split: str = "train"
    subset: str | None = Field(None, description="the dataset's configuration name, if it has several")


class SFTOptions(TrainingOptions):
    """Supervised fine-tuning of every weight; loss on the assistant's tokens by default."""

    learning_rate: float = Field(2e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(10, ge=0)

    chat_template: str = Field(
        "auto",
        description="auto: the tokenizer's chat template, or chatml when it has none; "
        "'tokenizer', 'chatml', 'plain', or a Jinja template string",
    )
    system_prompt: str | None = Field(None, description="system turn added to examples that have none")
    train_on: Literal["assistant", "last_assistant", "all"] = Field(
        "assistant", description="which tokens carry loss: every assistant turn, the last one, or all"
    )
    max_length: int = Field(512, ge=8, description="tokens per sequence; longer examples are truncated")
    truncation: Literal["right", "left", "drop"] = Field(
        "right", description="right: cut the end; left: cut the start; drop: skip the example"
    )
    packing: bool = Field(
        False, description="put several whole examples in one row of max_length (fewer pad tokens; "
        "attention crosses example boundaries)"
    )
    pad_to_multiple_of: int = Field(8, ge=1)
    shuffle: bool = True

    eval_size: float = Field(
        0.05, ge=0, description="held-out examples: a fraction (<1) or a count (>=1) of `data`; "
        "ignored when eval_data is set"
    )
    eval_data: dict[str, Any] | None = Field(
        None, description="a data-source section ({name: chat_jsonl, path: ...}) for held-out examples"
    )
    eval_on_start: bool = Field(True, description="evaluate once before the first step (the 'before' figures)")
    eval_batches: int | None = Field(None, ge=1, description="at most this many held-out batches per eval")
    eval_metric: str | None = Field(
        None, description="a reward function (e.g. exact_match) scored on generations for held-out prompts"
    )
    eval_metric_options: dict[str, Any] = Field(default_factory=dict)
    eval_generate: int = Field(64, ge=1, description="held-out prompts generated for eval_metric")
    max_new_tokens: int = Field(32, ge=1, description="longest generation for eval_metric")

    @model_validator(mode="after")
    def _check_eval_size(self) -> "SFTOptions":
        if self.eval_size >= 1 and self.eval_size != int(self.eval_size):
            raise ValueError(f"eval_size {self.eval_size}: a fraction below 1 or a whole count")
        return self


class LoraOptions(SFTOptions):
    """LoRA (or DoRA, or QLoRA) adapters through peft; only the adapters train."""

    learning_rate: float = Field(2e-4, gt=0)

    r: int = Field(16, ge=1, description="rank of the adapters")
    alpha: float | None = Field(None, gt=0, description="scaling numerator; None: 2 * r")
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: str | list[str] = Field(
        "auto", description="auto: per architecture (q/k/v/o_proj for Llama-like models, c_attn for "
        "GPT-2, peft's table otherwise); 'all-linear'; or module names"
    )
    modules_to_save: list[str] = Field(default_factory=list, description="modules trained in full, e.g. lm_head")
    use_dora: bool = Field(False, description="weight-decomposed LoRA (DoRA)")
    use_rslora: bool = Field(False, description="rank-stabilised scaling alpha / sqrt(r)")
    qlora: bool = Field(False, description="4-bit NF4 base weights through bitsandbytes (CUDA only)")
    merge: bool = Field(False, description="also save the merged model to output_dir/model")

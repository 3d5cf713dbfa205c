"""The base of every plugin's options model: strict, so a misspelt key is an error."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr

__all__ = ["Options", "SamplingDefaults", "SecretStr"]


class Options(BaseModel):
    """Options of one backend, trainer, tokenizer, data source or sink.

    Subclass it; declare API keys as `SecretStr` so they never print, log or save.
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), validate_default=True)


class SamplingDefaults(Options):
    """The sampling defaults every local backend takes besides its own (max_tokens, temperature,
    ...): what a request that leaves them unset gets (`rung.decoding.defaults_of` reads them)."""

    min_p: float | None = Field(None, ge=0, le=1, description="default min-p: keep tokens at least this share "
                                "of the most likely one's probability; null: off (hf: the model's)")
    repetition_penalty: float | None = Field(None, gt=0, description="default repetition penalty (CTRL's rule, "
                                             "greedy too); null or 1: off (hf: null is the model's)")
    token_healing: bool = Field(False, description="back a plain-text prompt up by its last token and make the "
                                "first token start with its text (a prompt ending in a space or mid-word)")

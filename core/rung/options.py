"""The base of every plugin's options model: strict, so a misspelt key is an error."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, SecretStr

__all__ = ["Options", "SecretStr"]


class Options(BaseModel):
    """Options of one backend, trainer, tokenizer, data source or sink.

    Subclass it; declare API keys as `SecretStr` so they never print, log or save.
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), validate_default=True)

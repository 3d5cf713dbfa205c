"""rung: prompt, fine-tune, or build a language model, with one config.

Imports are lazy so that `import rung` (and `rung --help`) stays fast; see `rung.api`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "hookimpl": "rung.hookspecs",
    "Message": "rung.records",
    "GenerationRequest": "rung.records",
    "Completion": "rung.records",
    "Delta": "rung.records",
    "Usage": "rung.records",
    "TokenLogprob": "rung.records",
    "Document": "rung.records",
    "ChatExample": "rung.records",
    "PreferencePair": "rung.records",
    "RewardedPrompt": "rung.records",
    "TrainResult": "rung.records",
    "Capabilities": "rung.interfaces",
    "Backend": "rung.interfaces",
    "BaseBackend": "rung.interfaces",
    "TrainableBackend": "rung.interfaces",
    "Tokenizer": "rung.interfaces",
    "Trainer": "rung.interfaces",
    "Engine": "rung.interfaces",
    "Options": "rung.options",
    "SecretStr": "rung.options",
    "TrainingOptions": "rung.training",
    "RungError": "rung.errors",
    "ConfigError": "rung.errors",
    "load_config": "rung.config",
    "make_config": "rung.config",
    "Run": "rung.runner",
    "RunContext": "rung.context",
    "backend": "rung.api",
    "tokenizer": "rung.api",
    "ask": "rung.api",
    "run": "rung.api",
    "get_plugins": "rung.plugins",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'rung' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:  # for editors and type checkers
    from rung.api import ask, backend, run, tokenizer
    from rung.config import load_config, make_config
    from rung.errors import ConfigError, RungError
    from rung.hookspecs import hookimpl
    from rung.interfaces import (
        Backend,
        BaseBackend,
        Capabilities,
        Engine,
        Tokenizer,
        TrainableBackend,
        Trainer,
    )
    from rung.options import Options, SecretStr
    from rung.plugins import get_plugins
    from rung.records import (
        ChatExample,
        Completion,
        Delta,
        Document,
        GenerationRequest,
        Message,
        PreferencePair,
        RewardedPrompt,
        TokenLogprob,
        TrainResult,
        Usage,
    )
    from rung.context import RunContext
    from rung.runner import Run
    from rung.training import TrainingOptions

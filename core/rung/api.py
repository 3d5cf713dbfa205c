"""The Python API: everything the CLI does, for scripts and notebooks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rung.config import load_config, make_config, section_model
from rung.interfaces import Backend, Tokenizer
from rung.plugins import get_plugins
from rung.records import Completion, GenerationRequest, Message, TrainResult
from rung.runner import build, run_config


def backend(name: str, tokenizer: Tokenizer | None = None, **options: Any) -> Backend:
    """A backend by name, e.g. ``rung.backend("openai", model="gpt-4o-mini")``."""
    resources = {"tokenizer": tokenizer} if tokenizer is not None else {}
    return build(get_plugins(), "backend", make_config_section("backend", {"name": name, **options}), **resources)


def tokenizer(name: str, **options: Any) -> Tokenizer:
    """A tokenizer by name, e.g. ``rung.tokenizer("byte")``."""
    return build(get_plugins(), "tokenizer", make_config_section("tokenizer", {"name": name, **options}))


def make_config_section(kind: str, data: Mapping[str, Any]) -> Any:
    """Validate one section (``{"name": ..., options}``) against its plugin's options model."""
    from pydantic import ValidationError

    from rung.errors import ConfigError

    plugins = get_plugins()
    model = section_model(plugins.registry, kind, data["name"])
    try:
        return model.model_validate(dict(data))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"{kind} '{data['name']}': {where}: {first['msg']}") from None


def ask(backend: Backend, prompt: str, system: str | None = None, **sampling: Any) -> Completion:
    """One prompt to one backend: ``rung.ask(b, "Hello", max_tokens=20).text``."""
    request = GenerationRequest(messages=(Message("user", prompt),), system=system, **sampling)
    return backend.generate(request)


def run(config: Any, overrides: Sequence[str] = ()) -> TrainResult:
    """Run a config given as a path, a dict, or a config object."""
    if isinstance(config, (str, Path)):
        config = load_config(config, overrides)
    elif isinstance(config, Mapping):
        config = make_config(config, overrides)
    return run_config(config)

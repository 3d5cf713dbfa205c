"""The backend a command line names: `-b NAME -m MODEL -o KEY=VALUE`, or a config's section."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DEFAULT_BACKEND = "openai"


@dataclass
class Target:
    """The backend built from the command line, and what the log records about it."""

    backend: Any
    name: str
    model: str | None
    options: dict[str, Any] = field(default_factory=dict)  # backend options, secrets left out


def build_target(backend: str | None, model: str | None, config: str | None, options: tuple[str, ...]) -> Target:
    """The backend of `config` (or named `backend`), with `model` and `-o` options applied."""
    from rung.api import backend_section
    from rung.config import config_to_dict
    from rung.plugins import get_plugins
    from rung.runner import build

    plugins = get_plugins()
    section = backend_section(backend, model, config, options, default=DEFAULT_BACKEND)
    instance = build(plugins, "backend", section)
    logged = config_to_dict(section)
    logged.pop("name", None)
    return Target(instance, section.name, getattr(section, "model", None), logged)

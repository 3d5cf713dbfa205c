"""The backend a command line names: `-b NAME -m MODEL -o KEY=VALUE`, or a config's section."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rung.errors import RungError

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
    from rung.config import apply_override, config_to_dict
    from rung.plugins import get_plugins
    from rung.runner import build

    plugins = get_plugins()
    for item in options:
        if "=" not in item:
            raise RungError(f"-o {item}: expected KEY=VALUE, e.g. -o base_url=http://localhost:8000/v1")
    if config is not None:
        from rung.config import load_config

        overrides = [f"backend.{item}" for item in options]
        if backend:
            overrides.insert(0, f"backend.name={backend}")
        if model:
            overrides.append(f"backend.model={model}")
        section = load_config(config, overrides).backend
    else:
        from rung.api import make_config_section

        data: dict[str, Any] = {"name": backend or DEFAULT_BACKEND}
        if model:
            data["model"] = model
        for item in options:
            apply_override(data, item)
        plugins.registry.get("backend", data["name"])  # unknown name: one line listing those installed
        section = make_config_section("backend", data)
    instance = build(plugins, "backend", section)
    logged = config_to_dict(section)
    logged.pop("name", None)
    return Target(instance, section.name, getattr(section, "model", None), logged)

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
        message = first["msg"].removeprefix("Value error, ")
        said = message.startswith(f"{first['loc'][-1]} ") if first["loc"] else False  # names the field itself
        raise ConfigError(f"{kind} '{data['name']}': {message if said else f'{where}: {message}'}") from None


def backend_section(backend: str | None, model: str | None = None, config: str | Path | None = None,
                    options: Sequence[str] = (), default: str | None = None) -> Any:
    """The backend section a command line describes, validated: `-b NAME -m MODEL -o KEY=VALUE`,
    or the `backend` section of a config file (`-c`) with those applied on top. Every command
    that takes a model (`rung prompt`, `rung chat`, `rung eval`, ...) reads its options this way,
    so errors name the option or the file's line alike."""
    from rung.config import apply_override
    from rung.errors import RungError

    for item in options:
        if "=" not in item:
            raise RungError(f"-o {item}: expected KEY=VALUE, e.g. -o base_url=http://localhost:8000/v1")
    if config is not None:
        overrides = [f"backend.{item}" for item in options]
        if backend:
            overrides.insert(0, f"backend.name={backend}")
        if model:
            overrides.append(f"backend.model={model}")
        return load_config(config, overrides).backend
    name = backend or default
    if name is None:
        raise RungError("name a backend: -b NAME (see `rung plugins`) or -c CONFIG")
    data: dict[str, Any] = {"name": name}
    if model:
        data["model"] = model
    for item in options:
        apply_override(data, item)
    get_plugins().registry.get("backend", name)  # an unknown name: one line listing those installed
    return make_config_section("backend", data)


def ask(backend: Backend, prompt: str, system: str | None = None, **sampling: Any) -> Completion:
    """One prompt to one backend: ``rung.ask(b, "Hello", max_tokens=20).text``."""
    request = GenerationRequest(messages=(Message("user", prompt),), system=system, **sampling)
    return backend.generate(request)


def run(config: Any, overrides: Sequence[str] = ()) -> TrainResult | list[Any]:
    """Run a config given as a path, a dict, or a config object: its `TrainResult`.

    A file with `stages:` runs its stages as `rung run FILE` does (finished, unchanged ones
    skipped) and returns the summary table's rows (`rung.stages.runner.Row`)."""
    if isinstance(config, (str, Path)):
        from rung.stages import is_staged

        if is_staged(config):
            from rung.stages import load_plan
            from rung.stages.runner import run_plan

            return run_plan(load_plan(config, overrides))
        config = load_config(config, overrides)
    elif isinstance(config, Mapping):
        config = make_config(config, overrides)
    return run_config(config)

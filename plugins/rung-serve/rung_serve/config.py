"""`rung serve CONFIG`: the YAML file naming the served models and the server's settings.

    models:                       # one or more; clients send `name` as "model"
      - name: tiny
        backend: {name: torch, model: runs/stdlib/model, device: cpu, adapter: runs/lora/adapter}
        tokenizer: {name: byte}   # only for a preset model without its own tokenizer
    server: {host: 127.0.0.1, port: 8000, api_key_store: serve}   # or api_key: ...
    limits: {max_queue: 64, request_timeout: 600, max_tokens: 512, max_body_bytes: 1048576}

Each backend (and tokenizer) section is validated by its plugin's own options model, as in a
run config; an error is one line naming the file, the line and the dotted path (rung.config's
reporting). The models are built once, at start: nothing a client sends names a file or a model
that is not here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PrivateAttr, SecretStr, ValidationError, create_model, field_validator

from rung.config import _format_errors, _section_union, _Where
from rung.errors import ConfigError, RungError
from rung.options import Options
from rung.registry import Registry, unknown_name_message
from rung.yaml_lines import Path_, load_yaml_with_lines
from rung_serve.limits import Limits

SERVED_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}$")
SECTION_KINDS = {"backend": "backend", "tokenizer": "tokenizer"}  # model entry key -> registry kind


class ServerSettings(Options):
    """Where rung serve listens and who may call it."""

    host: str = Field("127.0.0.1", description="address to bind; 0.0.0.0 exposes the server")
    port: int = Field(8000, ge=0, le=65535)
    api_key: SecretStr | None = Field(None, description="require 'Authorization: Bearer KEY'")
    api_key_store: str | None = Field(None, description="the name of that key in rung's key store (rung keys set)")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"


class ModelEntryBase(Options):
    name: str = Field(description="the name clients send as 'model'")

    @field_validator("name")
    @classmethod
    def _served_name(cls, value: str) -> str:
        if not SERVED_NAME.match(value):
            raise ValueError("a served name is letters, digits and . _ : @ / - (at most 128), starting with a "
                             "letter or digit")
        return value


class ServeConfigBase(Options):
    server: ServerSettings = Field(default_factory=ServerSettings)
    limits: Limits = Field(default_factory=Limits)
    _where: _Where = PrivateAttr(default_factory=lambda: _Where("<serve config>", {}, set()))


# id(registry) -> (the registry, its model): the registry is held so that its id is not reused
# by a later registry while cached (rung.config.config_model keeps its cache the same way).
_models: dict[int, tuple[Registry, type[ServeConfigBase]]] = {}


def serve_config_model(registry: Registry) -> type[ServeConfigBase]:
    """The serve config's model for the installed backends and tokenizers (built once per registry)."""
    cached = _models.get(id(registry))
    if cached is None or cached[0] is not registry:
        entry = create_model("ServedModel", __base__=ModelEntryBase,
                             backend=(_section_union(registry, "backend"), Field(description="the backend section")),
                             tokenizer=(_section_union(registry, "tokenizer") | None, None))
        model = create_model("ServeConfig", __base__=ServeConfigBase,
                             models=(list[entry], Field(min_length=1)))  # type: ignore[valid-type]
        cached = _models[id(registry)] = (registry, model)
    return cached[1]


def load_serve_config(path: str | Path, registry: Registry | None = None) -> ServeConfigBase:
    """Read and validate a serve config; a ConfigError of one line when it is wrong."""
    data, lines = load_yaml_with_lines(path)
    return make_serve_config(data, registry, source=str(path), lines=lines)


def make_serve_config(data: Any, registry: Registry | None = None, *, source: str = "<serve config>",
                      lines: Mapping[Path_, int] | None = None) -> ServeConfigBase:
    if registry is None:
        from rung.plugins import get_plugins

        registry = get_plugins().registry
    where = _Where(source, lines or {}, set())
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: a serve config is a mapping with 'models' (and 'server', 'limits')")
    _check_plugin_names(data, registry, where)
    model = serve_config_model(registry)
    try:
        config = model.model_validate(data)
    except ValidationError as exc:
        first = _format_errors(exc, data, model, where).splitlines()[0]
        more = len(exc.errors()) - 1
        raise ConfigError(first + (f" (and {more} more problem{'s' if more > 1 else ''})" if more else "")) from None
    seen: set[str] = set()
    for index, entry in enumerate(config.models):  # type: ignore[attr-defined]
        if entry.name in seen:
            raise ConfigError(f"{where(('models', index, 'name'))}: model name '{entry.name}' is served twice")
        seen.add(entry.name)
    config._where = where
    return config


def resolve_api_key(config: ServeConfigBase) -> str | None:
    """The server's API key: `server.api_key`, else `server.api_key_store` from rung's key store."""
    server = config.server
    if server.api_key is not None and server.api_key.get_secret_value():
        return server.api_key.get_secret_value()
    if server.api_key_store is None:
        return None
    return stored_key(server.api_key_store, config._where(("server", "api_key_store")))


def stored_key(name: str, where: str) -> str:
    """The key stored as `name` in rung's key store; a one-line error starting with `where` if none."""
    from rung.keys import check_name, get_key

    stored = get_key(check_name(name))
    if stored is None:
        raise ConfigError(f"{where}: the key store has no key '{name}' (store one with: rung keys set {name})")
    return stored.get_secret_value()


def build_models(config: ServeConfigBase) -> dict[str, Any]:
    """Served name -> backend, each built from its section (with its tokenizer, if it has one);
    what a backend refuses at load (a missing folder, a preset without tokenizer) is one line
    naming the section."""
    from rung.plugins import get_plugins
    from rung.runner import build

    plugins = get_plugins()
    built: dict[str, Any] = {}
    for index, entry in enumerate(config.models):  # type: ignore[attr-defined]
        try:
            resources = {"tokenizer": build(plugins, "tokenizer", entry.tokenizer)} if entry.tokenizer else {}
            built[entry.name] = build(plugins, "backend", entry.backend, **resources)
        except RungError as exc:
            raise ConfigError(f"{config._where(('models', index, 'backend'))}: {exc}") from None
    return built


def _check_plugin_names(data: Mapping[str, Any], registry: Registry, where: _Where) -> None:
    """An unknown or missing plugin name, said the way rung's run config says it."""
    entries = data.get("models")
    if not isinstance(entries, list):
        return  # pydantic reports it
    for index, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            continue
        for key, kind in SECTION_KINDS.items():
            section = entry.get(key)
            if not isinstance(section, Mapping):
                continue
            path: Path_ = ("models", index, key)
            name = section.get("name")
            if name is None:
                known = ", ".join(registry.names(kind)) or "none installed"
                raise ConfigError(f"{where(path)}: missing 'name' (which {kind}: {known})")
            if name not in registry.items[kind]:
                raise ConfigError(f"{where((*path, 'name'))}: {unknown_name_message(kind, name, registry.names(kind))}")


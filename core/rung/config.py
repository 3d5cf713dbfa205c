"""The run config: one pydantic model built from the installed plugins' options.

Each section (`backend`, `tokenizer`, `data`, `trainer`, each metric sink) picks its plugin
by `name` and is validated by that plugin's own options model. Errors name the file, the
line and the dotted path, say what is allowed, and suggest a close match.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, Field, SecretStr, ValidationError, create_model

from rung.errors import ConfigError, excerpt
from rung.options import Options
from rung.registry import Registry, unknown_name_message
from rung.yaml_lines import Path_, load_yaml_with_lines

# config key -> registry kind
SECTIONS: dict[str, str] = {
    "backend": "backend",
    "tokenizer": "tokenizer",
    "data": "data_source",
    "trainer": "trainer",
}


class PluginSection(Options):
    """The options of one plugin instance; `name` says which plugin."""

    name: str


class LoggingConfig(Options):
    """Where metrics go and how much the console says."""

    sinks: list[Any] = Field(
        default_factory=lambda: [{"name": "console"}, {"name": "jsonl"}],
        description="metric sinks, each {name: ..., options}",
    )
    level: Literal["debug", "info", "warning", "error"] = "info"


class RunConfigBase(Options):
    """Fields every run config has, whatever plugins are installed."""

    output_dir: Path = Field(Path("runs/run"), description="where checkpoints, metrics and the model go")
    seed: int = 0


# id(registry) -> (the registry, its model). The registry is held so its id is never reused
# while cached: keyed by a bare id, a registry built after an earlier one was collected could
# get its id and be handed that registry's model, which refuses the new plugins' sections.
_models: dict[int, tuple[Registry, type[RunConfigBase]]] = {}


def config_model(registry: Registry) -> type[RunConfigBase]:
    """The RunConfig model for the installed plugins (built once per registry)."""
    cached = _models.get(id(registry))
    if cached is None or cached[0] is not registry:
        cached = _models[id(registry)] = (registry, _build_model(registry))
    return cached[1]


def section_model(registry: Registry, kind: str, name: str) -> type[PluginSection]:
    """One plugin's options model with its `name` fixed: what a config section validates to."""
    descriptor = registry.get(kind, name)
    base = descriptor.options_model()
    return create_model(  # type: ignore[call-overload]
        f"{_camel(kind)}_{_camel(name)}",
        __base__=base,
        __doc__=descriptor.summary or base.__doc__,
        name=(Literal[name], Field(description=f"{kind.replace('_', ' ')} plugin")),
    )


def _section_union(registry: Registry, kind: str) -> Any:
    members = [section_model(registry, kind, name) for name in registry.names(kind)]
    if not members:
        return dict
    if len(members) == 1:
        return members[0]
    return Annotated[Union[tuple(members)], Field(discriminator="name")]


def _build_model(registry: Registry) -> type[RunConfigBase]:
    backend = _section_union(registry, "backend")
    sink = _section_union(registry, "metric_sink")
    logging_model = create_model(
        "Logging",
        __base__=LoggingConfig,
        sinks=(list[sink], Field(default_factory=lambda: [{"name": "console"}, {"name": "jsonl"}])),
    )
    fields: dict[str, Any] = {
        "backend": (backend, Field(description="the model: a hosted API or a compute backend")),
        "logging": (logging_model, Field(default_factory=logging_model)),
    }
    for key, kind in SECTIONS.items():
        if key != "backend":
            fields[key] = (_section_union(registry, kind) | None, None)
    return create_model("RunConfig", __base__=RunConfigBase, **fields)


def _camel(text: str) -> str:
    return "".join(part.capitalize() for part in str(text).replace("-", "_").split("_"))


# ---------------------------------------------------------------- loading and validating


def load_config(
    path: str | Path, overrides: Sequence[str] = (), registry: Registry | None = None
) -> RunConfigBase:
    """Read a YAML config, apply `key.path=value` overrides, validate against the plugins."""
    data, lines = load_yaml_with_lines(path)
    return make_config(data, overrides, registry, source=str(path), lines=lines)


def make_config(
    data: Mapping[str, Any],
    overrides: Sequence[str] = (),
    registry: Registry | None = None,
    *,
    source: str = "<config>",
    lines: Mapping[Path_, int] | None = None,
    prefix: Path_ = (),
    overridden: Sequence[Path_] = (),
) -> RunConfigBase:
    """Validate a config given as a dict (for scripts and notebooks).

    `prefix`: where the config sits in a larger document (a stage, `("stages", 2)`): errors name
    `stages[2].trainer.lr` and `lines` are keyed by the document's full paths. `overridden`: full
    paths that command-line overrides already set in `data` (errors say so)."""
    if registry is None:
        from rung.plugins import get_plugins

        registry = get_plugins().registry
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: a config must be a mapping of sections, got {type(data).__name__}")
    data = _deep_copy(data)
    overridden = set(overridden)
    for item in overrides:
        overridden.add((*prefix, *apply_override(data, item)))
    where = _Where(source, lines or {}, overridden, prefix)
    _check_plugin_names(data, registry, where)
    model = config_model(registry)
    try:
        config = model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, data, model, where)) from None
    _check_trainer_fits_backend(config, registry, where)
    return config


def apply_override(data: dict[str, Any], item: str) -> Path_:
    """Set `a.b.c=value` in `data` (value parsed as YAML); return the path it set.

    A section on the way that is missing is made; a list is stepped into by index, and an index
    past its end, or a key where a list needs an index, is said as such (not "is not a section").
    A value in the way is named by its type only: it may be a secret."""
    import yaml

    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override '{item}': expected KEY.PATH=VALUE, e.g. trainer.steps=100")
    parts = key.strip().split(".")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    node: Any = data
    for depth, part in enumerate(parts[:-1]):
        where = ".".join(parts[:depth])
        if isinstance(node, list):
            node = node[_list_index(node, part, where, item)]
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"override '{item}': {where} is not a section (it is a {type(node).__name__} value)")
        node = node.setdefault(part, {})
        if node is None:
            node = data_at(data, parts[:depth])[part] = {}
    where = ".".join(parts[:-1])
    if isinstance(node, list):
        node[_list_index(node, parts[-1], where, item)] = value
    elif isinstance(node, dict):
        node[parts[-1]] = value
    else:
        raise ConfigError(f"override '{item}': {where} is not a section (it is a {type(node).__name__} value)")
    return tuple(int(p) if p.isdigit() else p for p in parts)


def _list_index(items: list[Any], part: str, where: str, item: str) -> int:
    """`part` as an index into the list at `where`, or a ConfigError saying why it is not one."""
    span = f"0 to {len(items) - 1}" if items else "none: the list is empty"
    if not part.isdigit():
        raise ConfigError(f"override '{item}': {where} is a list; '{part}' is not an index (indexes: {span})")
    if int(part) >= len(items):
        count = f"{len(items)} item{'' if len(items) == 1 else 's'}"
        raise ConfigError(f"override '{item}': {where} has {count}; index {part} is out of range (indexes: {span})")
    return int(part)


def data_at(data: Any, parts: Sequence[str | int]) -> Any:
    for part in parts:
        data = data[int(part) if isinstance(data, list) else part]
    return data


class _Where:
    """Says where a dotted path came from: file and line, or the command line."""

    def __init__(self, source: str, lines: Mapping[Path_, int], overridden: set[Path_], prefix: Path_ = ()):
        self.source, self.lines, self.overridden, self.prefix = source, lines, overridden, prefix

    def __call__(self, path: Path_) -> str:
        # A config inside a larger document (a stage): its paths are named from the top,
        # `stages[2].trainer.lr`, and looked up in the document's line map.
        head = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in self.prefix).lstrip(".")
        dotted = ".".join([head] * bool(head) + [str(p) for p in path])
        path = (*self.prefix, *path)
        for n in range(len(path), 0, -1):
            if path[:n] in self.overridden:
                return f"command line override {dotted}"
        for n in range(len(path), -1, -1):
            if path[:n] in self.lines:
                at = f"{self.source}:{self.lines[path[:n]]}"
                return f"{at}: {dotted}" if dotted else at
        return f"{self.source}: {dotted}" if dotted else self.source


def _check_plugin_names(data: dict[str, Any], registry: Registry, where: _Where) -> None:
    def check(section: Any, path: Path_, kind: str) -> None:
        if not isinstance(section, Mapping):
            return  # pydantic reports the wrong type
        name = section.get("name")
        if name is None:
            known = ", ".join(registry.names(kind)) or "none installed"
            raise ConfigError(f"{where(path)}: missing 'name' (which {kind.replace('_', ' ')}: {known})")
        if name not in registry.items[kind]:
            raise ConfigError(f"{where((*path, 'name'))}: {unknown_name_message(kind, name, registry.names(kind))}")

    for key, kind in SECTIONS.items():
        if data.get(key) is not None:
            check(data[key], (key,), kind)
    sinks = data.get("logging", {}).get("sinks") if isinstance(data.get("logging"), Mapping) else None
    if isinstance(sinks, list):
        for index, sink in enumerate(sinks):
            check(sink, ("logging", "sinks", index), "metric_sink")


def _check_trainer_fits_backend(config: Any, registry: Registry, where: _Where) -> None:
    """A trainer needs its objectives from the backend's framework: say so before the run."""
    if config.trainer is None:
        return
    from rung.objectives import missing

    backend = registry.get("backend", config.backend.name)
    trainer = registry.get("trainer", config.trainer.name)
    lacking = missing(registry, trainer.objectives, backend.framework)
    if lacking:
        has = ", ".join(registry.frameworks_with(trainer.objectives)) or "none installed"
        raise ConfigError(
            f"{where(('trainer', 'name'))}: trainer '{trainer.name}' needs objective "
            f"{', '.join(repr(n) for n in lacking)}, which backend '{backend.name}' "
            f"(framework: {backend.framework or 'none, a hosted API'}) does not provide; "
            f"it trains on: {has}"
        )


def _format_errors(exc: ValidationError, data: Any, model: type[BaseModel], where: _Where) -> str:
    lines = []
    for error in exc.errors()[:10]:
        path = _data_path(data, error["loc"])
        if error["type"] == "extra_forbidden":
            allowed = _allowed_keys(model, data, path[:-1])
            message = f"unknown key '{path[-1]}'"
            close = difflib.get_close_matches(str(path[-1]), allowed, n=1)
            if close:
                message += f" (did you mean '{close[0]}'?)"
            if allowed:
                message += f"; allowed: {', '.join(allowed)}"
        else:
            message = error["msg"]
            shown_as_is = "input" in error and not isinstance(error["input"], (dict, list, SecretStr))
            if error["type"] not in ("missing",) and shown_as_is and str(error["input"]) not in message:
                shown = error["input"]
                if _is_secret_path(model, data, path):
                    shown = "**********"
                message += f" (got {shown if shown == '**********' else excerpt(shown)})"
        lines.append(f"{where(path)}: {message}")
    if len(exc.errors()) > 10:
        lines.append(f"... and {len(exc.errors()) - 10} more errors")
    return "\n".join(lines)


def _data_path(data: Any, loc: Sequence[str | int]) -> Path_:
    """The path in the user's data: drop the union tags pydantic adds to error locations."""
    path: list[str | int] = []
    node = data
    for part in loc:
        if isinstance(node, Mapping) and part not in node and node.get("name") == part:
            continue  # a discriminator tag, not a key the user wrote
        if isinstance(part, str) and "[" in part:
            continue  # e.g. 'list[...]' or 'function-after[...]' wrappers
        path.append(part)
        if isinstance(node, Mapping):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            node = None
    return tuple(path)


def _model_at(model: Any, data: Any, path: Path_) -> type[BaseModel] | None:
    """The pydantic model that validates the mapping at `path`, if one can be found."""
    current: Any = model
    node = data
    for part in path:
        current = _resolve(current, node)
        if current is None:
            return None
        if isinstance(part, int):
            current = _list_item(current)
        elif isinstance(current, type) and issubclass(current, BaseModel) and part in current.model_fields:
            current = current.model_fields[part].annotation
        else:
            return None
        node = node[part] if isinstance(node, (Mapping, list)) and (isinstance(node, list) or part in node) else None
    resolved = _resolve(current, node)
    return resolved if isinstance(resolved, type) and issubclass(resolved, BaseModel) else None


def _resolve(annotation: Any, node: Any) -> Any:
    """Unwrap Optional/Annotated/unions down to the model for `node` (by its `name`)."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _resolve(typing.get_args(annotation)[0], node)
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if arg is type(None):
                continue
            candidate = _resolve(arg, node)
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                name_field = candidate.model_fields.get("name")
                wanted = node.get("name") if isinstance(node, Mapping) else None
                if name_field is None or typing.get_args(name_field.annotation) == (wanted,):
                    return candidate
            elif typing.get_origin(candidate) is list:
                return candidate
        return None
    return annotation


def _list_item(annotation: Any) -> Any:
    args = typing.get_args(annotation)
    return args[0] if typing.get_origin(annotation) is list and args else None


def _allowed_keys(model: Any, data: Any, path: Path_) -> list[str]:
    found = _model_at(model, data, path)
    return list(found.model_fields) if found else []


def _is_secret_path(model: Any, data: Any, path: Path_) -> bool:
    parent = _model_at(model, data, path[:-1]) if path else None
    if parent is None or path[-1] not in parent.model_fields:
        return False
    return "SecretStr" in str(parent.model_fields[path[-1]].annotation)


def _deep_copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


# ---------------------------------------------------------------- writing back


def config_to_dict(config: BaseModel) -> dict[str, Any]:
    """The config as plain data, with every secret left out (not masked: left out)."""

    def clean(value: Any) -> Any:
        if isinstance(value, BaseModel):
            return {
                key: clean(getattr(value, key))
                for key in type(value).model_fields
                if not isinstance(getattr(value, key), SecretStr)
            }
        if isinstance(value, Mapping):
            return {k: clean(v) for k, v in value.items() if not isinstance(v, SecretStr)}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        if isinstance(value, Path):
            return str(value)
        return value

    return clean(config)


def config_to_yaml(config: BaseModel) -> str:
    """The config as YAML, secrets left out; what a run saves beside its outputs."""
    import yaml

    return yaml.safe_dump(config_to_dict(config), sort_keys=False)


def json_schema(registry: Registry) -> dict[str, Any]:
    """A JSON Schema for run configs, including every installed plugin's options."""
    schema = config_model(registry).model_json_schema()
    schema["title"] = "rung run config"
    return schema

"""Finding and loading plugins: entry points in the group ``rung``, built-ins included.

Environment:
  RUNG_LOAD_PLUGINS=rung-openai,rung-torch   load only these plugins (distribution or
                                             entry-point names); the core's own always loads
  RUNG_DISABLE_PLUGIN_AUTOLOAD=1             load only the core's own plugins

A plugin that raises while importing or registering is reported in one warning line on
stderr and skipped; whatever it had registered is taken back.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import pluggy

from rung import hookspecs
from rung.hookspecs import REGISTRATION_HOOKS
from rung.registry import Descriptor, Registry, import_object

GROUP = "rung"
CORE_DISTRIBUTION = "rung"


@dataclass
class PluginInfo:
    """One loaded plugin, as `rung plugins` lists it."""

    name: str  # the distribution name, e.g. "rung-openai"
    version: str
    module: str
    registered: list[Descriptor] = field(default_factory=list)


@dataclass
class Plugins:
    """The plugin manager, what each plugin registered, and what went wrong."""

    manager: pluggy.PluginManager
    registry: Registry
    loaded: list[PluginInfo]
    warnings: list[str]

    @property
    def hook(self) -> Any:
        """The lifecycle hooks, e.g. ``plugins.hook.rung_on_step(run=..., step=..., metrics=...)``."""
        return self.manager.hook


_plugins: Plugins | None = None


def get_plugins() -> Plugins:
    """The installed plugins, loaded once per process."""
    global _plugins
    if _plugins is None:
        _plugins = load_plugins()
        for line in _plugins.warnings:
            print(f"rung: warning: {line}", file=sys.stderr)
    return _plugins


def reset_plugins() -> None:
    """Forget the loaded plugins, so the next `get_plugins()` finds them again (tests)."""
    global _plugins
    _plugins = None


def _wanted(dist_name: str, ep_name: str) -> bool:
    if dist_name == CORE_DISTRIBUTION:
        return True
    if os.environ.get("RUNG_DISABLE_PLUGIN_AUTOLOAD", "").strip() not in ("", "0", "false"):
        return False
    only = os.environ.get("RUNG_LOAD_PLUGINS")
    if only is None:
        return True
    allowed = {name.strip() for name in only.split(",") if name.strip()}
    return dist_name in allowed or ep_name in allowed


def load_plugins(extra: list[tuple[str, ModuleType | object]] = ()) -> Plugins:
    """Load every wanted entry-point plugin (and `extra` (name, module) pairs) and register."""
    manager = pluggy.PluginManager("rung")
    manager.add_hookspecs(hookspecs)
    registry = Registry()
    loaded: list[PluginInfo] = []
    warnings: list[str] = []

    candidates: list[tuple[str, str, str, Any]] = []
    for found in sorted(find_entry_points(), key=lambda f: (f.dist != CORE_DISTRIBUTION, f.dist)):
        if not _wanted(found.dist, found.name):
            continue
        try:
            module = import_object(found.value)
        except Exception as exc:  # a broken plugin must not break the others
            warnings.append(f"plugin {found.dist} skipped: {_one_line(exc)}")
            continue
        candidates.append((found.dist, found.version, found.value, module))
    for name, module in extra:
        candidates.append((name, "", getattr(module, "__name__", repr(module)), module))

    for dist_name, version, module_name, module in candidates:
        try:
            manager.register(module, name=dist_name)
        except Exception as exc:
            warnings.append(f"plugin {dist_name} skipped: {_one_line(exc)}")
            continue
        info = PluginInfo(dist_name, version, module_name)
        try:
            for kind, hook_name in REGISTRATION_HOOKS.items():
                for impl in getattr(manager.hook, hook_name).get_hookimpls():
                    if impl.plugin is module:
                        impl.function(register=registry.registrar(kind, dist_name, info.registered))
        except Exception as exc:
            registry.remove(info.registered)
            manager.unregister(module)
            warnings.append(f"plugin {dist_name} skipped: {_one_line(exc)}")
            continue
        loaded.append(info)

    warnings.extend(registry.problems)
    return Plugins(manager, registry, loaded, warnings)


@dataclass(frozen=True)
class FoundEntryPoint:
    dist: str  # the distribution's name as its metadata spells it, e.g. "rung-openai"
    version: str
    name: str
    value: str  # "package.module" or "package.module:attr"


def find_entry_points(group: str = GROUP) -> list[FoundEntryPoint]:
    """Entry points of `group` from every distribution on sys.path, first one of a name wins.

    `importlib.metadata.entry_points()` parses the METADATA of every installed distribution
    (~60 ms with a hundred of them); this reads only `entry_points.txt` files, and METADATA
    only for the distributions that have a `[rung]` section.
    """
    found: list[FoundEntryPoint] = []
    seen: set[str] = set()
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        for folder in names:
            if not folder.endswith((".dist-info", ".egg-info")):
                continue
            key = folder.rpartition(".")[0].split("-")[0].lower().replace("_", "-").replace(".", "-")
            if key in seen:
                continue
            seen.add(key)
            base = os.path.join(entry, folder)
            try:
                with open(os.path.join(base, "entry_points.txt"), encoding="utf-8") as f:
                    text = f.read()
            except OSError:
                continue
            if f"[{group}]" not in text:
                continue
            dist, version = _name_and_version(base, key)
            for ep_name, value in _section(text, group):
                found.append(FoundEntryPoint(dist, version, ep_name, value))
    return found


def _section(text: str, group: str) -> list[tuple[str, str]]:
    items, inside = [], False
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("["):
            inside = line == f"[{group}]"
        elif inside and "=" in line and not line.startswith(("#", ";")):
            name, _, value = line.partition("=")
            items.append((name.strip(), value.strip()))
    return items


def _name_and_version(base: str, fallback: str) -> tuple[str, str]:
    name, version = fallback, ""
    for filename in ("METADATA", "PKG-INFO"):
        try:
            with open(os.path.join(base, filename), encoding="utf-8") as f:
                for line in f:
                    if line.startswith("Name:"):
                        name = line[5:].strip()
                    elif line.startswith("Version:"):
                        version = line[8:].strip()
                    elif not line.strip():
                        break  # headers end at the first blank line
            break
        except OSError:
            continue
    return name, version


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__

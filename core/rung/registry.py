"""What plugins registered: light descriptors, imported on first use."""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass, field
from typing import Any

from rung.errors import PluginError
from rung.hookspecs import REGISTRATION_HOOKS
from rung.objectives import key as objective_key


def import_object(path: str) -> Any:
    """Import ``"package.module:attr.sub"`` and return the object."""
    module_name, _, attr = path.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in filter(None, attr.split(".")):
        obj = getattr(obj, part)
    return obj


@dataclass(frozen=True)
class Descriptor:
    """One registered thing: its kind and name, where it lives, and which plugin gave it."""

    kind: str
    name: str
    impl: str  # "package.module:Object", imported by load()
    plugin: str
    options: str | None = None  # "package.module:OptionsModel", a pydantic model
    summary: str = ""
    framework: str | None = None  # backends and objectives: "torch", "jax"; None: hosted
    objectives: tuple[str, ...] = ()  # trainers: the objectives they ask the framework for

    def load(self) -> Any:
        """Import and return the implementation."""
        try:
            return import_object(self.impl)
        except ImportError as exc:
            raise PluginError(
                f"{self.kind} '{self.name}' from {self.plugin} cannot be imported ({exc}); "
                f"is the plugin installed with its dependencies?"
            ) from exc

    def options_model(self) -> type:
        """The pydantic model of this thing's options (an empty one if it takes none)."""
        if self.options is None:
            from rung.options import Options

            return Options
        try:
            return import_object(self.options)
        except ImportError as exc:
            raise PluginError(
                f"options of {self.kind} '{self.name}' from {self.plugin} cannot be imported: {exc}"
            ) from exc


@dataclass
class Registry:
    """Every descriptor by kind and name; duplicates are refused and reported."""

    items: dict[str, dict[str, Descriptor]] = field(
        default_factory=lambda: {kind: {} for kind in REGISTRATION_HOOKS}
    )
    problems: list[str] = field(default_factory=list)

    def registrar(self, kind: str, plugin: str, added: list[Descriptor]):
        """The `register` callback handed to one plugin's registration hook for one kind."""

        def register(
            name: str,
            *,
            impl: str,
            options: str | None = None,
            summary: str = "",
            framework: str | None = None,
            objectives: tuple[str, ...] | list[str] = (),
        ) -> None:
            if kind == "objective":
                if not framework:
                    self.problems.append(f"objective '{name}' from {plugin} refused: it names no framework=")
                    return
                name = objective_key(name, framework)
            existing = self.items[kind].get(name)
            if existing is not None:
                self.problems.append(
                    f"{kind} '{name}' from {plugin} refused: {existing.plugin} already "
                    f"registered a {kind} of that name"
                )
                return
            descriptor = Descriptor(
                kind, name, impl, plugin, options, summary, framework, tuple(objectives)
            )
            self.items[kind][name] = descriptor
            added.append(descriptor)

        return register

    def remove(self, descriptors: list[Descriptor]) -> None:
        for d in descriptors:
            if self.items[d.kind].get(d.name) is d:
                del self.items[d.kind][d.name]

    def names(self, kind: str) -> list[str]:
        return sorted(self.items[kind])

    def frameworks_with(self, objectives: tuple[str, ...]) -> list[str]:
        """The frameworks that provide every one of `objectives`."""
        have: dict[str, set[str]] = {}
        for d in self.items["objective"].values():
            have.setdefault(d.framework or "", set()).add(d.name.split("/")[0])
        return sorted(f for f, names in have.items() if set(objectives) <= names)

    def get(self, kind: str, name: str) -> Descriptor:
        """The descriptor, or a PluginError that lists what exists and suggests a close name."""
        try:
            return self.items[kind][name]
        except KeyError:
            raise PluginError(unknown_name_message(kind, name, self.names(kind))) from None


def unknown_name_message(kind: str, name: str, known: list[str]) -> str:
    label = kind.replace("_", " ")
    message = f"unknown {label} '{name}'"
    close = difflib.get_close_matches(str(name), known, n=1)
    if close:
        message += f" (did you mean '{close[0]}'?)"
    if known:
        message += f"; installed: {', '.join(known)}"
    else:
        message += f"; no {label} is installed"
    return message

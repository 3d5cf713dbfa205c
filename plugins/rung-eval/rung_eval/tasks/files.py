"""What the task kinds share: the files a spec names, its JSONL records, and their fields.

Paths in a task spec are relative to the spec's own folder (`base_dir`), so a spec and its
data travel together; every error names the file (and line) it is about.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rung.errors import ConfigError


def resolve_paths(patterns: Sequence[str], base_dir: Path, task: str) -> list[Path]:
    """The files `patterns` name (paths or globs, `**` allowed), relative to `base_dir`, in order."""
    found: list[Path] = []
    for pattern in patterns:
        full = Path(os.path.expanduser(pattern))
        full = full if full.is_absolute() else Path(base_dir) / full
        if glob.has_magic(str(full)):
            matches = sorted(Path(p) for p in glob.glob(str(full), recursive=True) if Path(p).is_file())
            if not matches:
                raise ConfigError(f"task '{task}': '{pattern}' matches no file (looked for {full})")
            found.extend(matches)
        elif full.is_dir():
            raise ConfigError(f"task '{task}': {full} is a folder; name its files, e.g. '{pattern}/*.txt'")
        elif not full.is_file():
            raise ConfigError(f"task '{task}': no file {full}")
        else:
            found.append(full)
    return found


def resolve_in(base_dir: Path, path: str) -> str:
    """`path` relative to `base_dir` unless it is absolute (or a glob rooted there)."""
    expanded = Path(os.path.expanduser(path))
    return str(expanded if expanded.is_absolute() else Path(base_dir) / expanded)


@dataclass(frozen=True)
class Record:
    """One JSONL line: its object and where it came from (`file:line`)."""

    data: Mapping[str, Any]
    where: str

    def field(self, name: str) -> Any:
        """The value of `name`; a missing field is an error naming the line."""
        if name not in self.data:
            have = ", ".join(sorted(self.data)) or "none"
            raise ConfigError(f"{self.where}: no field '{name}' (fields: {have})")
        return self.data[name]

    def first_field(self, names: Iterable[str], what: str) -> Any:
        """The value of the first of `names` present (a spec that leaves a field name unset)."""
        names = tuple(names)
        for name in names:
            if name in self.data:
                return self.data[name]
        raise ConfigError(f"{self.where}: no {what} field ({' or '.join(names)}); name it in the task spec")

    def render(self, template: str) -> str:
        """`template` (a Python format string) filled with this record's fields."""
        try:
            return template.format(**self.data)
        except KeyError as exc:
            raise ConfigError(f"{self.where}: the template names field {exc} which this line lacks") from None
        except (IndexError, ValueError) as exc:
            raise ConfigError(f"template {template!r}: {exc} (use {{field}}; write {{{{ for a brace)") from None


def read_records(paths: Sequence[Path], limit: int | None = None) -> list[Record]:
    """The JSON objects of JSONL files, one a line (blank lines skipped), at most `limit`; a
    damaged line is one error at file:line (`rung.jsonl.read_jsonl`)."""
    from rung.jsonl import read_jsonl

    records: list[Record] = []
    for path in paths:
        for data, where in read_jsonl(path):
            if not isinstance(data, dict):
                raise ConfigError(f"{where}: a line is a JSON object, got {type(data).__name__}")
            records.append(Record(data, where))
            if limit is not None and len(records) >= limit:
                return records
    if not records:
        raise ConfigError(f"{', '.join(map(str, paths))}: no records")
    return records


def task_scorer(backend: Any, model: Any, task: str, **settings: Any) -> Any:
    """`rung_eval.scoring.scorer_for(backend, model, ...)` with the spec's scorer settings
    (stride, max_length, batch_size: those set); one the scorer does not take is an error."""
    import inspect

    from rung_eval.scoring import scorer_for

    wanted = {key: value for key, value in settings.items() if value is not None}
    accepted = inspect.signature(scorer_for).parameters
    unknown = [key for key in wanted if key not in accepted]
    if unknown:
        raise ConfigError(f"task '{task}': {', '.join(unknown)}: this scorer has no such setting; drop it")
    return scorer_for(backend, model, **wanted)


def build_registered(kind: str, section: Mapping[str, Any], where: str) -> Any:
    """A registered `kind` (reward_function, data_source) built from `section`, validated by its
    options; an unknown name or a bad option is one error that says `where`."""
    from rung.errors import PluginError
    from rung.plugins import get_plugins
    from rung.runner import build, validate_section

    plugins = get_plugins()
    try:
        options = validate_section(plugins.registry, kind, section, where)
    except PluginError as exc:  # an unknown name: the registry's message, with where it was asked for
        raise ConfigError(f"{where}: {exc}") from None
    return build(plugins, kind, options)

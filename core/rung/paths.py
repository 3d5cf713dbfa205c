"""Paths: where rung keeps per-user files (``$RUNG_CONFIG_DIR``, else
``$XDG_CONFIG_HOME/rung``, else ``~/.config/rung``), and the check that a path a run will read
exists, made when its config is validated rather than minutes into the run (`existing_path`)."""

from __future__ import annotations

import contextlib
import contextvars
import glob
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Literal


def config_dir() -> Path:
    """The user's rung config directory (not created)."""
    explicit = os.environ.get("RUNG_CONFIG_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CONFIG_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".config"
    return base / "rung"


def ensure_config_dir() -> Path:
    """The config directory, created with mode 0700 if it is missing."""
    path = config_dir()
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


# ---------------------------------------------------------------- paths a run will read

#: Characters that make a path a glob pattern.
GLOB_CHARS = frozenset("*?[")

PathKind = Literal["file", "folder", "any"]


def looks_like_path(name: str) -> bool:
    """Whether `name` can only be a place on disk, never a preset name or a hub id (`name` or
    `org/name`): it starts with `/`, `.` or `~`, has a backslash, a drive letter, a trailing
    slash, or more than one `/`."""
    return (name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") > 1
            or name.endswith("/") or (len(name) > 1 and name[1] == ":"))


#: Paths that count as present though they do not exist yet: what earlier stages of a staged
#: config will write (`planned_paths`), absolute and normalised.
_PLANNED: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("rung_planned_paths", default=())


@contextlib.contextmanager
def planned_paths(paths: Iterable[str | Path]) -> Iterator[None]:
    """While the block runs, `path_problem` passes every path at or under one of `paths`: a
    config whose stage 3 reads the model stage 1 will save validates before stage 1 has run."""
    token = _PLANNED.set(tuple(os.path.abspath(os.path.expanduser(str(p))) for p in paths))
    try:
        yield
    finally:
        _PLANNED.reset(token)


def _is_planned(text: str) -> bool:
    planned = _PLANNED.get()
    if not planned:
        return False
    if GLOB_CHARS & set(text):  # a pattern: where its fixed part lies
        text = os.path.dirname(text[:min(text.index(c) for c in GLOB_CHARS if c in text)]) or "."
    target = os.path.abspath(text)
    return any(target == p or target.startswith(p.rstrip(os.sep) + os.sep) for p in planned)


def path_problem(value: str, kind: PathKind = "any", *, globs: bool = False, recursive: bool = False,
                 marker: str | None = None, what: str | None = None) -> str | None:
    """Why `value` does not name what a run will read (one line quoting it), or None if it does.

    `kind`: a file, a folder, or either. `globs`: a pattern (`*?[`) must match at least one such
    thing (`recursive`: `**` crosses folders); the search stops at the first match, so a huge
    tree costs no more than finding one file. `marker`: a file a folder must hold (e.g.
    `adapter_config.json`). `what` names the thing in the message ("a checkpoint directory").
    Relative paths are relative to the working directory, as everywhere in rung; `~` is expanded.
    """
    from rung.errors import excerpt

    shown = excerpt(value, limit=240)  # a path is quoted whole; a hostile megabyte is not
    what = what or {"file": "a file", "folder": "a folder", "any": "a file or folder"}[kind]
    text = os.path.expanduser(value)
    if _is_planned(text):
        return None  # an earlier stage will write it
    fits = {"file": os.path.isfile, "folder": os.path.isdir, "any": os.path.exists}[kind]
    if globs and GLOB_CHARS & set(text):
        if any(fits(match) for match in glob.iglob(text, recursive=recursive)):
            return None
        return f"no {'folder' if kind == 'folder' else 'file'} matches {shown}"
    if not os.path.exists(text):
        return f"{shown} is not {what} (it does not exist)"
    if not fits(text):
        return f"{shown} is not {what} (it is a {'folder' if os.path.isdir(text) else 'file'})"
    if marker and not os.path.isfile(os.path.join(text, marker)):
        return f"{shown} is not {what} (no {marker} in it)"
    return None


def existing_path(kind: PathKind = "any", *, globs: bool = False, recursive: bool = False,
                  marker: str | None = None, what: str | None = None,
                  or_names: Iterable[str] = (), names_kind: str = "name") -> Callable[[Any], Any]:
    """A pydantic validator that refuses a path the run could not read, when the config is
    validated (so `rung config validate` says so, with the file, line and dotted path, before a
    run spends minutes preparing data). Use it as
    ``Annotated[str, AfterValidator(existing_path("file"))]`` or call it in a field_validator.

    It takes a string or a list of strings (each checked; None passes) and returns the value
    with a leading `~` expanded, so the code that opens it finds what was checked. `or_names`:
    names that are not paths (a model preset): one of them passes; a bare name that is neither
    one of them nor on disk is "unknown `names_kind`".
    """
    names = sorted(or_names)

    def check(value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, (list, tuple)):
            return type(value)(check(item) for item in value)
        if not isinstance(value, str):
            return value  # the field's type refuses it
        if value in names:
            return value
        problem = path_problem(value, kind, globs=globs, recursive=recursive, marker=marker, what=what)
        if problem is None:
            return os.path.expanduser(value) if value.startswith("~") else value
        if names:
            if not os.path.exists(value) and not any(c in value for c in "/\\") and value[:1] not in ".~":
                import difflib

                from rung.errors import excerpt

                close = difflib.get_close_matches(value[:100], names, n=1)
                problem = f"unknown {names_kind} {excerpt(value, limit=240)}"
                problem += f" (did you mean '{close[0]}'?)" if close else ""
                problem += f"; known: {', '.join(names)}"
            else:
                problem += f" nor a {names_kind.split()[-1]} ({', '.join(names)})"
        from pydantic_core import PydanticCustomError

        raise PydanticCustomError("path_not_found", problem)

    return check

"""Where a value of the suite is: `file:line: dotted.path`, what every error message starts with."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from rung.errors import ConfigError

Key = tuple[str | int, ...]


def dotted(path: Sequence[str | int]) -> str:
    """`("tests", 3, "assert", 0)` as `tests[3].assert[0]`."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


class Locator:
    """Lines of a YAML document's values (from `rung.yaml_lines`), for error messages."""

    def __init__(self, origin: str | Path, lines: Mapping[Key, int] | None = None) -> None:
        self.origin = str(origin)
        self.lines = dict(lines or {})

    def line(self, path: Key) -> int | None:
        """The line of `path`, or of its nearest ancestor that has one."""
        for end in range(len(path), 0, -1):
            if path[:end] in self.lines:
                return self.lines[path[:end]]
        return None

    def at(self, path: Key) -> str:
        """`file:line` of `path` (just `file` when no line is known)."""
        line = self.line(path)
        return f"{self.origin}:{line}" if line else self.origin

    def __call__(self, path: Key) -> str:
        """`file:line: dotted.path`: the start of an error message about `path`."""
        name = dotted(path)
        return f"{self.at(path)}: {name}" if name else self.at(path)

    def error(self, path: Key, message: str) -> ConfigError:
        return ConfigError(f"{self(path)}: {message}")

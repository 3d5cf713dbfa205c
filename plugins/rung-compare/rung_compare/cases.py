"""Test cases from files: JSONL (one case per line) and CSV (one per row), as promptfoo reads them.

A JSONL line is a case (`{"vars": {...}, "assert": [...], "description": ...}`) or, without
`vars`, the variables themselves (`{"question": ..., "answer": ...}`). A CSV row's columns are
variables, except `__expected` (and `__expected1`, `__expected2`...: an assertion each, written
`contains: Paris`, `regex: ^\\d+$`, `is-json`, or plain text meaning equals) and `__description`.
Errors name `file:line`.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rung.errors import ConfigError

from rung_compare.assertions import KINDS

CASE_KEYS = {"description", "vars", "assert", "metadata"}
VALUELESS = {"is-json", "python"}  # kinds an `__expected` cell may give without a value


@dataclass(frozen=True)
class RawCase:
    """A test case as read, before its assertions are parsed; `where` is `file:line`."""

    data: Mapping[str, Any]  # description, vars, assert
    where: str


def read_cases(path: Path, where: str) -> list[RawCase]:
    """The cases of a .jsonl or .csv file (`where` says which suite key named it)."""
    if not path.exists():
        raise ConfigError(f"{where}: {path}: no such cases file")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return list(_jsonl(path))
    if suffix == ".csv":
        return list(_csv(path))
    raise ConfigError(f"{where}: {path}: cases are a .jsonl or .csv file")


def _jsonl(path: Path) -> Iterator[RawCase]:
    from rung.jsonl import read_jsonl

    for value, where in read_jsonl(path):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: a test case is a JSON object, not {type(value).__name__}")
        if "vars" in value or "assert" in value:
            unknown = sorted(set(value) - CASE_KEYS)
            if unknown:
                raise ConfigError(f"{where}: unknown test case key '{unknown[0]}'; allowed: "
                                  f"{', '.join(sorted(CASE_KEYS))}")
            yield RawCase(value, where)
        else:
            yield RawCase(split_expected(value, where), where)


def _csv(path: Path) -> Iterator[RawCase]:
    try:
        handle = path.open(encoding="utf-8", newline="")
        with handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames:
                raise ConfigError(f"{path}:1: the CSV has no header row")
            for row in reader:
                where = f"{path}:{reader.line_num}"
                if None in row:
                    raise ConfigError(f"{where}: more cells than the header has columns")
                if any(value is None for value in row.values()):
                    raise ConfigError(f"{where}: fewer cells than the header has columns")
                yield RawCase(split_expected(row, where), where)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x})") from None
    except csv.Error as exc:
        raise ConfigError(f"{path}: malformed CSV: {exc}") from None


def split_expected(row: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A flat row (JSONL object or CSV row) as a case: `__expected*` cells become assertions."""
    variables: dict[str, Any] = {}
    asserts: list[dict[str, Any]] = []
    description = None
    for key, value in row.items():
        if key == "__description":
            description = value
        elif key.startswith("__expected"):
            if value not in (None, ""):
                asserts.append(parse_expected(str(value), f"{where}: {key}"))
        elif key.startswith("__"):
            raise ConfigError(f"{where}: unknown column '{key}' (special columns: __expected, __expected1..., "
                              "__description)")
        else:
            variables[key] = value
    out: dict[str, Any] = {"vars": variables, "assert": asserts}
    if description is not None:
        out["description"] = description
    return out


def parse_expected(cell: str, where: str) -> dict[str, Any]:
    """`contains: Paris` as {type: contains, value: Paris}; plain text is an `equals`."""
    head, sep, rest = cell.partition(":")
    kind = head.strip()
    base = kind[4:] if kind.startswith("not-") else kind
    if kind == "grade":  # promptfoo's name for a rubric graded by a model
        return {"type": "llm-rubric", "value": rest.strip()}
    if base in VALUELESS and not sep:
        return {"type": kind}
    if sep and base in KINDS:
        return {"type": kind, "value": rest.strip()}
    return {"type": "equals", "value": cell}

"""JSON Lines, read one way everywhere: data files, task files, metrics.

Every JSONL reader in rung goes through `read_jsonl`, so a hostile or damaged file is one
error naming its file and line, whichever plugin reads it: bytes that are not UTF-8, a line
that is not JSON (nested past the decoder's recursion limit, an integer past Python's digit
limit), and a line longer than `max_line_bytes` (read in bounded memory: the reader
never holds more than that of one line, so a 20 MB line costs 16 MB at most, not gigabytes).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from rung.errors import ConfigError

MAX_LINE_BYTES = 16 * 1024 * 1024


def read_jsonl(path: str | Path, max_line_bytes: int = MAX_LINE_BYTES,
               skip_partial_last: bool = False, skip_invalid: bool = False) -> Iterator[tuple[Any, str]]:
    """Each JSON value of the file with where it is (`file:line`); blank lines are skipped.

    `skip_partial_last`: a last line without its newline is being written (a live
    metrics.jsonl) and is left out rather than called broken. `skip_invalid`: lines that are
    not UTF-8 JSON are left out (a best-effort reader, such as the plot a run draws at its end).
    """
    path = Path(path)
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    with handle:
        number = 0
        while True:
            raw = handle.readline(max_line_bytes + 1)
            if not raw:
                return
            number += 1
            where = f"{path}:{number}"
            if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
                raise ConfigError(f"{where}: a line longer than {max_line_bytes} bytes "
                                  "(one record a line; is this JSON Lines?)")
            if skip_partial_last and not raw.endswith(b"\n") and not handle.read(1):
                return
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                if skip_invalid:
                    continue
                raise ConfigError(f"{where}: not UTF-8 text (byte {raw[exc.start]:#04x} at column "
                                  f"{exc.start + 1})") from None
            if not text.strip():
                continue
            try:
                value = json.loads(text)
            except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError too
                if skip_invalid:
                    continue
                raise ConfigError(f"{where}: {_json_problem(exc)}") from None
            yield value, where


def _json_problem(exc: ValueError | RecursionError) -> str:
    """What is wrong with a line `json.loads` refused, in a few words."""
    if isinstance(exc, json.JSONDecodeError):
        return f"not valid JSON ({exc.msg}, column {exc.colno})"
    if isinstance(exc, RecursionError):  # the decoder recurses once per nested [ or {
        return "JSON nested too deeply to read"
    # an integer longer than Python converts (sys.get_int_max_str_digits(), 4300 digits by default)
    return f"cannot be read as JSON ({str(exc).split(';')[0]})"


def latest_history(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Step records (`{"step": n, ...}`) as the run's latest history, each step once: when a
    resumed run logs a step again (it restarted from a checkpoint before it), its records
    replace the earlier ones from that step on. Records without an integer step are dropped."""
    out: list[dict[str, Any]] = []
    last = -1
    for record in records:
        step = record.get("step") if isinstance(record, Mapping) else None
        if not isinstance(step, int) or isinstance(step, bool):
            continue
        if step < last:  # a resume went back: what was logged from `step` on is superseded
            out = [r for r in out if r["step"] < step]
        out.append(dict(record))
        last = step
    return out

"""Replies kept on disk, so a rerun of a suite asks only what changed.

The key of a reply is a SHA-256 of its backend (the section as configured, secrets and
transport settings such as timeouts left out, a local model folder's file sizes and times
in) and the request (messages, system, sampling). One small JSON file per reply, written
atomically, under `<cache dir>/<2 hex>/<key>.json`; errors are never cached.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rung.records import GenerationRequest

VERSION = 1  # bump when what a key covers changes


def request_key(identity: Mapping[str, Any], request: GenerationRequest) -> str:
    """The cache key of `request` sent to the backend `identity` describes."""
    body = {"v": VERSION, "backend": identity, "request": _plain(request)}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


class ReplyCache:
    """Reply records by key; `enabled=False` reads nothing (every reply is asked) but still writes."""

    def __init__(self, folder: Path, read: bool = True) -> None:
        self.folder = Path(folder)
        self.read = read

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        if not self.read:
            return None
        try:
            record = json.loads(self._path(key).read_text(encoding="utf-8"))
        except (OSError, ValueError):  # absent, or damaged: ask again
            return None
        return record if isinstance(record, dict) and isinstance(record.get("text"), str) else None

    def put(self, key: str, record: Mapping[str, Any]) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
        partial.write_text(json.dumps(record, ensure_ascii=False), encoding="utf-8")
        os.replace(partial, path)


def _plain(value: Any) -> Any:
    """`value` as JSON-able data; a dataclass as its fields that differ from their defaults, so
    a field added to GenerationRequest or Message later leaves every key as it was."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {}
        for spec in dataclasses.fields(value):
            item = getattr(value, spec.name)
            if spec.default is not dataclasses.MISSING:
                default = spec.default
            elif spec.default_factory is not dataclasses.MISSING:
                default = spec.default_factory()
            else:
                default = dataclasses.MISSING
            if default is dataclasses.MISSING or item != default:
                out[spec.name] = _plain(item)
        return out
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value

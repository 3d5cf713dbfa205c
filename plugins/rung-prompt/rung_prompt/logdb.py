"""The prompt log: every prompt and reply of `rung prompt` and `rung chat` in SQLite.

``<config dir>/logs.db`` (mode 0600). One row per exchange: time, backend, model, the
options used (secrets left out), system prompt, prompt, reply, finish reason, usage and
time taken, and the tool calls made on the way (`rung prompt --tool`: a JSON list of
{round, id, name, arguments, output, is_error, seconds}; NULL without tools). A log written
before the tool_calls column existed gets it added on first open. Keys are never written:
backend options go through `config_to_dict`, which drops every `SecretStr`.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rung.paths import config_dir

FILE_NAME = "logs.db"

SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created REAL NOT NULL,          -- unix time
    conversation TEXT,              -- set for the turns of one `rung chat`
    backend TEXT NOT NULL,
    model TEXT,
    options TEXT NOT NULL,          -- JSON: backend options (no secrets) and sampling
    system TEXT,
    prompt TEXT NOT NULL,
    response TEXT NOT NULL,
    finish_reason TEXT,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    duration_s REAL,
    first_token_s REAL,
    tool_calls TEXT                 -- JSON list of the tool calls and results, or NULL
);
CREATE INDEX IF NOT EXISTS responses_created ON responses(created);
"""

COLUMNS = (
    "id", "created", "conversation", "backend", "model", "options", "system", "prompt",
    "response", "finish_reason", "prompt_tokens", "completion_tokens", "duration_s", "first_token_s", "tool_calls",
)
# Columns added after the first release: (name, SQL type), added to an older log on open.
ADDED_COLUMNS = (("tool_calls", "TEXT"),)


def db_path() -> Path:
    return config_dir() / FILE_NAME


def connect(path: Path | None = None, create: bool = True) -> sqlite3.Connection | None:
    """The log database (created, mode 0600, when `create`); None if absent and not `create`."""
    path = path or db_path()
    if not path.exists():
        if not create:
            return None
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    conn = sqlite3.connect(path, timeout=10)
    conn.row_factory = sqlite3.Row
    conn.executescript(SCHEMA)
    present = {row[1] for row in conn.execute("PRAGMA table_info(responses)")}
    for name, kind in ADDED_COLUMNS:
        if name not in present:
            with conn:
                conn.execute(f"ALTER TABLE responses ADD COLUMN {name} {kind}")
    return conn


def record(
    *,
    backend: str,
    model: str | None,
    options: Mapping[str, Any],
    prompt: str,
    response: str,
    system: str | None = None,
    conversation: str | None = None,
    finish_reason: str | None = None,
    prompt_tokens: int | None = None,
    completion_tokens: int | None = None,
    duration_s: float | None = None,
    first_token_s: float | None = None,
    tool_calls: Sequence[Mapping[str, Any]] | None = None,
    path: Path | None = None,
) -> int:
    """Append one exchange; returns its id. `tool_calls`: the calls and results made on the
    way (`rung.tools.ToolResult.as_dict()` each)."""
    conn = connect(path)
    assert conn is not None
    with conn:
        cursor = conn.execute(
            "INSERT INTO responses (created, conversation, backend, model, options, system, prompt, response,"
            " finish_reason, prompt_tokens, completion_tokens, duration_s, first_token_s, tool_calls)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (time.time(), conversation, backend, model, json.dumps(dict(options), default=str, sort_keys=True),
             system, prompt, response, finish_reason, prompt_tokens, completion_tokens, duration_s, first_token_s,
             None if tool_calls is None else json.dumps([dict(c) for c in tool_calls], default=str)),
        )
    conn.close()
    return int(cursor.lastrowid or 0)


def recent(limit: int = 10, query: str | None = None, path: Path | None = None) -> list[dict[str, Any]]:
    """The `limit` most recent exchanges (oldest first), optionally only those containing `query`."""
    conn = connect(path, create=False)
    if conn is None:
        return []
    where, args = "", []
    if query:
        pattern = "%" + query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        where = (" WHERE prompt LIKE ? ESCAPE '\\' OR response LIKE ? ESCAPE '\\' OR system LIKE ? ESCAPE '\\'"
                 " OR tool_calls LIKE ? ESCAPE '\\'")
        args = [pattern] * 4
    rows = conn.execute(f"SELECT * FROM responses{where} ORDER BY id DESC LIMIT ?", (*args, int(limit))).fetchall()
    conn.close()
    out = []
    for row in reversed(rows):
        item = dict(row)
        item["options"] = json.loads(item["options"] or "{}")
        item["tool_calls"] = json.loads(item["tool_calls"]) if item.get("tool_calls") else None
        out.append(item)
    return out

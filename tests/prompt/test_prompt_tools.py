"""`rung prompt --tool` as a user runs it: a subprocess of the installed `rung` against the
fake API server, tools from a module beside the user; calls logged and shown by `rung logs`."""

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fake_llm_server import TEST_KEY as KEY

RUNG = str(Path(sys.executable).with_name("rung"))

TOOLS = '''
def add(a: int, b: int) -> int:
    """Add two numbers.

    Args:
        a: the first number
        b: the second number
    """
    return a + b


def explode(reason: str) -> str:
    """Always fails."""
    raise RuntimeError("boom: " + reason)
'''


@pytest.fixture
def cli(server, tmp_path):
    (tmp_path / "mytools.py").write_text(TOOLS)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "ANTHROPIC_"))}
    env.update(RUNG_CONFIG_DIR=str(tmp_path / "config"), RUNG_LOAD_PLUGINS="rung-openai,rung-anthropic,rung-prompt",
               OPENAI_API_KEY=KEY, ANTHROPIC_API_KEY=KEY, PYTHONUNBUFFERED="1")

    def run(*args, check=True):
        proc = subprocess.run([RUNG, *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
        assert KEY not in proc.stdout + proc.stderr
        if check:
            assert proc.returncode == 0, proc.stderr
        return proc

    run.openai = ["-m", "gpt-test", "-o", f"base_url={server.openai_base_url}"]
    run.anthropic = ["-b", "anthropic", "-m", "claude-test", "-o", f"base_url={server.anthropic_base_url}"]
    run.config_dir = tmp_path / "config"
    return run


def test_prompt_with_a_tool_runs_the_call_answers_and_logs_it(cli, server):
    server.ask_tool("add", {"a": 2, "b": 40})
    proc = cli("prompt", *cli.openai, "--tool", "mytools:add", "--tool", "mytools.py:explode", "what is 2 + 40?")
    assert proc.stdout == "tool said: 42\n"
    assert 'rung: tool add {"a": 2, "b": 40} -> 42' in proc.stderr
    first, second = (r.body for r in server.requests)
    assert [t["function"]["name"] for t in first["tools"]] == ["add", "explode"]
    call_id = second["messages"][-2]["tool_calls"][0]["id"]
    assert second["messages"][-1] == {"role": "tool", "tool_call_id": call_id, "content": "42"}

    listed = cli("logs").stdout
    assert '  tool add {"a": 2, "b": 40} -> 42' in listed and "< tool said: 42" in listed
    entry = json.loads(cli("logs", "--json").stdout)
    assert entry["response"] == "tool said: 42" and entry["finish_reason"] == "stop"
    assert [(c["round"], c["id"], c["name"], c["arguments"], c["output"], c["is_error"]) for c in
            entry["tool_calls"]] == [(1, call_id, "add", '{"a": 2, "b": 40}', "42", False)]
    from rung_prompt import logdb

    os.environ["RUNG_CONFIG_DIR"] = str(cli.config_dir)  # (the autouse fixture restores it)
    assert len(logdb.recent(10, query="add")) == 1  # -q searches the calls too: only its call says "add"


def test_a_raising_tool_and_max_rounds_on_the_anthropic_wire(cli, server):
    server.ask_tool("explode", {"reason": "testing"})
    proc = cli("prompt", *cli.anthropic, "--tool", "mytools:explode", "go")
    assert proc.stdout == "tool said: error: RuntimeError: boom: testing\n"
    assert "rung: tool explode" in proc.stderr and "(error)" in proc.stderr
    assert server.requests[-1].body["messages"][-1]["content"][0]["is_error"] is True

    server.ask_tool("explode", {"reason": "again"})
    server.ask_tool("explode", {"reason": "and again"})
    proc = cli("prompt", *cli.anthropic, "--tool", "mytools:explode", "--max-rounds", "1", "go", check=False)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip().splitlines()[-1] == (
        "rung: error: tools: the model still asks for tool calls (explode) after 1 round; raise max_rounds "
        "(rung prompt --max-rounds N)")


def test_a_tool_that_cannot_be_loaded_is_one_line(cli, server):
    proc = cli("prompt", *cli.openai, "--tool", "mytools:add", "--tool", "mytools:nope", "hi", check=False)
    assert proc.returncode == 1 and proc.stderr == "rung: error: --tool mytools:nope: mytools has no function nope\n"
    assert server.requests == []  # refused before anything was sent


def test_a_log_written_before_tool_calls_existed_still_opens(tmp_path, monkeypatch):
    monkeypatch.setenv("RUNG_CONFIG_DIR", str(tmp_path))
    old = sqlite3.connect(tmp_path / "logs.db")
    old.executescript("""CREATE TABLE responses (id INTEGER PRIMARY KEY AUTOINCREMENT, created REAL NOT NULL,
        conversation TEXT, backend TEXT NOT NULL, model TEXT, options TEXT NOT NULL, system TEXT, prompt TEXT NOT NULL,
        response TEXT NOT NULL, finish_reason TEXT, prompt_tokens INTEGER, completion_tokens INTEGER,
        duration_s REAL, first_token_s REAL);
        INSERT INTO responses (created, backend, options, prompt, response) VALUES (1.0, 'openai', '{}', 'p', 'r');""")
    old.commit()
    old.close()
    from rung_prompt import logdb

    logdb.record(backend="openai", model="m", options={}, prompt="q", response="a",
                 tool_calls=[{"name": "add", "output": "3"}])
    rows = logdb.recent(5)
    assert [(r["prompt"], r["tool_calls"]) for r in rows] == [("p", None), ("q", [{"name": "add", "output": "3"}])]

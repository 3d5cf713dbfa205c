"""`rung prompt`, `rung chat`, `rung logs`, `rung keys` as a user runs them: subprocesses of the
installed `rung` against a local fake API server, with the user config in a temp dir."""

import json
import os
import re
import signal
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fake_llm_server import TEST_KEY as KEY

RUNG = str(Path(sys.executable).with_name("rung"))


@pytest.fixture
def cli(server, tmp_path):
    config_dir = tmp_path / "config"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "ANTHROPIC_"))}
    env.update(RUNG_CONFIG_DIR=str(config_dir), RUNG_LOAD_PLUGINS="rung-openai,rung-anthropic,rung-prompt",
               OPENAI_API_KEY=KEY, PYTHONUNBUFFERED="1")
    outputs = []

    def run(*args, input=None, check=True, **extra_env):
        proc = subprocess.run([RUNG, *args], input=input, capture_output=True, text=True,
                              env={**env, **extra_env}, cwd=tmp_path, timeout=120)
        outputs.append(proc.stdout + proc.stderr)
        if check:
            assert proc.returncode == 0, proc.stderr
        return proc

    run.env, run.outputs, run.config_dir = env, outputs, config_dir
    run.openai = ["-m", "gpt-test", "-o", f"base_url={server.openai_base_url}"]
    yield run
    for text in outputs:  # whatever a command printed, never a key
        assert KEY not in text


def test_prompt_streams_the_reply_logs_it_and_logs_finds_it(cli, server):
    proc = cli("prompt", *cli.openai, "-o", f"api_key={KEY}", "--system", "be kind", "--temperature", "0.4",
               "--max-tokens", "20", "-v", "hello rivers", OPENAI_API_KEY="")  # the key on the command line
    assert proc.stdout == "echo: hello rivers\n"
    assert "4 prompt + 3 completion tokens" in proc.stderr
    body = server.requests[-1].body
    assert (
        body["stream"] is True
        and body["temperature"] == 0.4
        and body["messages"][0] == {"role": "system", "content": "be kind"}
    )
    cli("prompt", *cli.openai, "--no-log", "not logged")

    listed = cli("logs").stdout
    assert "openai gpt-test" in listed and "> hello rivers" in listed and "< echo: hello rivers" in listed
    assert "not logged" not in listed
    found = [json.loads(line) for line in cli("logs", "-q", "rivers", "--json").stdout.splitlines()]
    assert len(found) == 1
    entry = found[0]
    assert (entry["backend"], entry["model"], entry["system"], entry["response"]) == (
        "openai",
        "gpt-test",
        "be kind",
        "echo: hello rivers",
    )
    assert (entry["prompt_tokens"], entry["completion_tokens"], entry["finish_reason"]) == (4, 3, "stop")
    assert entry["options"]["temperature"] == 0.4 and entry["options"]["base_url"] == server.openai_base_url
    assert entry["duration_s"] > 0 and entry["options"].get("api_key") is None
    assert KEY.encode() not in (cli.config_dir / "logs.db").read_bytes()
    from rung_prompt import logdb

    os.environ["RUNG_CONFIG_DIR"] = str(cli.config_dir)  # (the autouse fixture restores it)
    assert len(logdb.recent(10)) == 1 and logdb.recent(10, query="no such text") == []


def test_chat_keeps_the_conversation_and_ends_on_eof(cli, server):
    proc = cli("chat", *cli.openai, "--system", "terse", input="first turn\n\nsecond turn\n")
    assert proc.stdout == "echo: first turn\necho: second turn\n"
    assert server.requests[-1].body["messages"] == [
        {"role": "system", "content": "terse"}, {"role": "user", "content": "first turn"},
        {"role": "assistant", "content": "echo: first turn"}, {"role": "user", "content": "second turn"},
    ]
    with sqlite3.connect(cli.config_dir / "logs.db") as db:
        rows = db.execute("SELECT prompt, conversation FROM responses ORDER BY id").fetchall()
    assert [r[0] for r in rows] == ["first turn", "second turn"] and rows[0][1] == rows[1][1] is not None


def test_chat_leaves_cleanly_on_ctrl_c(cli):
    proc = subprocess.Popen([RUNG, "chat", *cli.openai], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=cli.env)
    try:
        proc.stdin.write("are you there\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == "echo: are you there\n"  # now waiting for the next line
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill() if proc.poll() is None else None
    assert proc.returncode == 0 and "Traceback" not in err


def test_a_config_picks_the_backend_and_options_override_it(cli, server, tmp_path):
    config = tmp_path / "chat.yaml"
    config.write_text(f"backend:\n  name: anthropic\n  model: claude-test\n"
                      f"  base_url: {server.anthropic_base_url}\n  api_key: {KEY}\n")
    proc = cli("prompt", "-c", str(config), "-o", "max_tokens=2", "--no-stream", "one two three")
    assert proc.stdout == "echo: one \n" and "token limit" in proc.stderr
    assert server.requests[-1].path == "/v1/messages" and server.requests[-1].body["max_tokens"] == 2
    db = (cli.config_dir / "logs.db").read_bytes()
    assert b"claude-test" in db and KEY.encode() not in db
    shown = cli("config", "show", str(config)).stdout  # the config as rung saves it: no key
    assert "claude-test" in shown and "api_key:" not in shown and KEY not in shown


def test_a_cut_stream_is_a_one_line_failure_and_not_logged(cli, server):
    server.fault("cut")
    proc = cli("prompt", *cli.openai, "-o", "max_retries=0", "one two three four five six", check=False)
    assert proc.returncode == 1 and "cut off after" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout.startswith("echo: ") and proc.stdout.endswith("\n") and proc.stderr.strip().count("\n") == 0
    assert not (cli.config_dir / "logs.db").exists()  # an incomplete reply is not logged as an answer


def test_keys_set_list_use_and_never_leak(cli, server):
    proc = cli("keys", "set", "openai", input=KEY + "\n")
    store = cli.config_dir / "keys.json"
    assert stat.S_IMODE(store.stat().st_mode) == 0o600 and KEY not in proc.stderr
    assert cli("keys", "list").stdout == "openai\n"
    wrong = "sk-wrong-ECHOED-by-server-55555"  # the environment wins over the store; the server echoes it
    proc = cli("prompt", *cli.openai, "-o", "max_retries=0", "x", check=False, OPENAI_API_KEY=wrong)
    assert proc.returncode == 1 and proc.stderr.startswith("rung: error: openai: the API key was refused (401)")
    assert proc.stderr.strip().count("\n") == 0 and "$OPENAI_API_KEY" in proc.stderr
    assert "ECHOED" not in proc.stderr + proc.stdout
    proc = cli("prompt", *cli.openai, "-v", "from the store", OPENAI_API_KEY="")
    assert proc.stdout == "echo: from the store\n"
    db = (cli.config_dir / "logs.db").read_bytes()
    assert b"from the store" in db and KEY.encode() not in db
    cli("keys", "remove", "openai")
    assert cli("keys", "list").stdout == ""


def test_raw_is_refused_by_a_hosted_chat_api_in_one_line(cli, server):
    sent = len(server.requests)
    proc = cli("prompt", *cli.openai, "--raw", "def fibonacci(n):", check=False)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith("rung: error: openai: raw continuation (--raw) needs a local backend or a "
                                  "server with the completions endpoint")
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    # nothing went out as a disguised user turn: only the completions endpoint was asked
    assert all(r.path.endswith("/v1/completions") for r in server.requests[sent:])
    proc = cli("prompt", *cli.openai, "--raw", "--system", "be kind", "x", check=False)
    assert proc.returncode == 2 and "--raw continues TEXT as plain text" in proc.stderr


def test_raw_continues_the_text_where_a_local_chat_model_would_wrap_it(cli, tmp_path):
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    import rung

    byte = rung.tokenizer("byte")
    byte.save(tmp_path / "byte")
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(tmp_path / "byte" / "tokenizer.json"), eos_token="<|endoftext|>"
    )
    tokenizer.chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}[assistant] "
    model = tmp_path / "chat-model"
    tokenizer.save_pretrained(model)
    import torch

    torch.manual_seed(0)  # the same random model every run
    transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=byte.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )).save_pretrained(model)
    local = dict(RUNG_LOAD_PLUGINS="rung-torch,rung-tokenizers,rung-prompt")
    args = ("prompt", "-b", "torch", "-m", str(model), "-o", "device=cpu", "--max-tokens", "2", "-v")

    templated = len("[user] def f(\n[assistant] ")  # bytes: one token each
    chat = cli(*args, "def f(", **local)  # a chat model answers a user turn through its template
    # (a random model may sample its end-of-text token first: the prompt's count is the point)
    assert re.search(rf"\[torch chat-model \| {templated} prompt \+ [12] completion tokens", chat.stderr)
    raw = cli(*args, "--raw", "def f(", **local)  # --raw: the text itself, byte for byte
    assert re.search(rf"\[torch chat-model \| {len('def f(')} prompt \+ [12] completion tokens", raw.stderr)
    logged = [json.loads(line) for line in cli("logs", "--json", **local).stdout.splitlines()]
    assert [entry["options"].get("raw") for entry in logged] == [None, True]

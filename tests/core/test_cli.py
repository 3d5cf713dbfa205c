"""The `rung` executable, as a user drives it, with a third-party plugin pip-installed."""

from __future__ import annotations

import json
import re
import textwrap


def test_help_lists_core_and_plugin_commands(rung_cli):
    result = rung_cli("--help")
    assert result.returncode == 0
    for name in ("plugins", "config", "run"):
        assert re.search(rf"^  {name}\s+\S", result.stdout, re.M)
    assert re.search(r"^  hello\s+Say hello from a plugin\.$", result.stdout, re.M)
    # Broken plugins cost one warning line each, and the CLI still works.
    warnings = [line for line in result.stderr.splitlines() if line.startswith("rung: warning:")]
    assert any("rung-broken" in line for line in warnings)
    assert "Traceback" not in result.stderr


def test_plugin_command_runs(rung_cli):
    result = rung_cli("hello")
    assert result.returncode == 0 and result.stdout.strip() == "hello from rung-echo"


def test_plugins_table_and_json(rung_cli):
    table = rung_cli("plugins")
    assert table.returncode == 0
    row = next(line for line in table.stdout.splitlines() if line.startswith("rung-echo"))
    assert "1.2.3" in row and "backends: echo" in row and "trainers: count" in row
    data = json.loads(rung_cli("plugins", "--json").stdout)
    echo = next(p for p in data["plugins"] if p["name"] == "rung-echo")
    assert echo["registered"]["backend"] == ["echo"] and echo["version"] == "1.2.3"
    assert any("rung-broken" in w for w in data["warnings"])


def test_load_plugins_env_hides_others(rung_cli):
    data = json.loads(rung_cli("plugins", "--json", env={"RUNG_LOAD_PLUGINS": "rung-echo"}).stdout)
    assert sorted(p["name"] for p in data["plugins"]) == ["rung", "rung-echo"]
    assert data["warnings"] == []


def test_unknown_command_suggests(rung_cli):
    result = rung_cli("plugns")
    assert result.returncode == 2 and "did you mean 'plugins'?" in result.stderr


def write_config(tmp_path, body):
    path = tmp_path / "run.yaml"
    path.write_text(textwrap.dedent(body))
    return path


def test_config_validate_good_and_bad(rung_cli, tmp_path):
    good = write_config(tmp_path, f"backend: {{name: echo}}\ntrainer: {{name: count, steps: 2}}\n"
                                  f"output_dir: {tmp_path}\n")
    assert rung_cli("config", "validate", str(good)).stdout.strip() == f"{good}: valid"
    bad = rung_cli("config", "validate", str(good), "trainer.step=3")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith(
        "rung: error: command line override trainer.step: unknown key 'step' (did you mean 'steps'?)")
    assert "Traceback" not in bad.stderr


def test_config_schema_is_json_with_plugin_options(rung_cli):
    schema = json.loads(rung_cli("config", "schema").stdout)
    backends = schema["properties"]["backend"]["discriminator"]["mapping"]
    echo = schema["$defs"][backends["echo"].rsplit("/", 1)[-1]]
    assert echo["properties"]["prefix"]["default"] == "echo: " and echo["additionalProperties"] is False
    trainers = schema["properties"]["trainer"]
    assert "count" in json.dumps(trainers)


def test_run_trains_with_a_third_party_backend_and_trainer(rung_cli, tmp_path):
    out = tmp_path / "out"
    config = write_config(tmp_path, f"""\
        backend: {{name: echo, prefix: "re: ", api_key: sk-do-not-print}}
        trainer: {{name: count, steps: 3}}
        output_dir: {out}
        logging:
          sinks: [{{name: console}}, {{name: jsonl}}]
        """)
    result = rung_cli("run", str(config), "trainer.steps=4")
    assert result.returncode == 0, result.stderr
    assert "done: 4 steps, final loss 0.2500" in result.stderr
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3, 4] and lines[0]["echo"] == "re: x"
    events = (out / "events.txt").read_text().splitlines()
    assert events[0] == "after_model_load EchoBackend"
    assert events[1:] == ["on_step 1", "on_step 2", "on_step 3", "on_step 4", "on_checkpoint 4", "on_train_end 4"]
    saved = (out / "config.yaml").read_text()
    assert "steps: 4" in saved
    for text in (saved, result.stdout, result.stderr, (out / "metrics.jsonl").read_text()):
        assert "sk-do-not-print" not in text


def test_bad_config_in_run_exits_2_without_traceback(rung_cli, tmp_path):
    config = write_config(tmp_path, "backend: {name: ecoh}\n")
    result = rung_cli("run", str(config))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"rung: error: {config}:1: backend.name: unknown backend 'ecoh' (did you mean 'echo'?); installed: "
        + result.stderr.split("installed: ")[1].strip()
    )
    assert "Traceback" not in result.stderr

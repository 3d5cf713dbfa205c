"""YAML built to hurt: every config, serve config and task spec loads in bounded time and memory
(rung.yaml_lines), and an error quotes at most a short, cut excerpt of a value.

Each document here would, before the bounds, have run for minutes (nested aliases), ended in a
RecursionError traceback (deep nesting) or echoed a megabyte back (a long value).
"""

from __future__ import annotations

import pytest

from rung.errors import ConfigError, excerpt
from rung.yaml_lines import MAX_DEPTH, MAX_VALUES, load_yaml_text, load_yaml_with_lines


def billion_laughs(levels: int = 9, width: int = 9) -> str:
    lines = ["a0: &a0 [" + ", ".join(['"lol"'] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def nested(depth: int) -> str:
    return "a: " + "[" * depth + "]" * depth + "\n"


def test_nested_aliases_are_refused_before_they_expand():
    with pytest.raises(ConfigError, match=rf"laughs.yaml:\d+: this YAML expands to more than {MAX_VALUES} values"):
        load_yaml_text(billion_laughs(), "laughs.yaml")


def test_aliases_within_bounds_still_load_as_shared_values():
    data, lines = load_yaml_text(billion_laughs(levels=3, width=3), "ok.yaml")
    assert data["a2"] == [[["lol"] * 3] * 3] * 3
    assert lines[("a2",)] == 3 and ("a2", 2, 1, 0) in lines  # every expanded path has a line


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 5000, 100_000])
def test_deep_nesting_is_one_error_not_a_recursion_traceback(depth):
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_yaml_text(nested(depth), "deep.yaml")


def test_nesting_within_the_bound_loads():
    data, _ = load_yaml_text(nested(MAX_DEPTH - 2), "deep.yaml")
    assert isinstance(data["a"], list)


def test_an_alias_that_contains_itself_is_refused():
    with pytest.raises(ConfigError, match="selfref.yaml:1: a YAML alias refers to itself"):
        load_yaml_text("a: &x [1, *x]\n", "selfref.yaml")


def test_bytes_that_are_not_utf8_name_the_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"backend:\n  name: torch\n  model: \xff\xfe\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:3: not UTF-8 text \(byte 0xff\)"):
        load_yaml_with_lines(path)


def test_an_oversized_file_is_refused_without_reading_it(tmp_path, monkeypatch):
    import rung.yaml_lines as yaml_lines

    path = tmp_path / "big.yaml"
    path.write_text("a: " + "x" * 2000 + "\n")
    monkeypatch.setattr(yaml_lines, "MAX_BYTES", 1000)
    with pytest.raises(ConfigError, match=r"big.yaml: 2004 bytes is too large for a YAML config \(at most 1000\)"):
        load_yaml_with_lines(path)


def test_an_error_quotes_a_cut_excerpt_of_a_long_value(tmp_path):
    from rung.config import load_config

    path = tmp_path / "long.yaml"
    path.write_text("backend: {name: torch, model: test}\ntrainer: {name: pretrain, steps: " + "9x" * 500_000 + "}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert message.startswith(f"{path}:2: trainer.steps: ")
    assert "(1000000 characters))" in message and len(message) < 400


def test_excerpt_keeps_short_values_whole():
    assert excerpt("model-a") == "'model-a'"
    assert excerpt("x" * 500).endswith("... (500 characters)") and len(excerpt("x" * 500)) < 90


def test_the_cli_says_one_line_and_exits_non_zero(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "laughs.yaml"
    path.write_text(billion_laughs())
    done = subprocess.run([sys.executable, "-m", "rung.cli.main", "config", "validate", str(path)],
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "Traceback" not in done.stderr
    assert "expands to more than" in done.stderr

"""rung.jsonl: one JSONL reader for data, task and metrics files; damage is one line naming file:line."""

from __future__ import annotations

import json

import pytest

from rung.errors import ConfigError
from rung.jsonl import latest_history, read_jsonl


def test_records_come_with_file_and_line_and_blank_lines_are_skipped(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"x": 1}\n\n{"x": "é"}\n')
    assert list(read_jsonl(path)) == [({"x": 1}, f"{path}:1"), ({"x": "é"}, f"{path}:3")]


def test_bytes_that_are_not_utf8_name_the_line_and_column(tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_bytes(b'{"a": 1}\n{"messages": "\xc3\x28"}\n')
    with pytest.raises(ConfigError, match=rf"^{path}:2: not UTF-8 text \(byte 0xc3 at column 15\)$"):
        list(read_jsonl(path))


def test_a_line_that_is_not_json_names_line_and_column(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": 1}\n{"a": }\n')
    with pytest.raises(ConfigError, match=rf"^{path}:2: not valid JSON \(Expecting value, column 7\)$"):
        list(read_jsonl(path))


def test_an_overlong_line_is_refused_without_holding_it(tmp_path):
    path = tmp_path / "long.jsonl"
    path.write_text('{"a": 1}\n' + json.dumps({"text": "x" * 5000}) + "\n")
    records = read_jsonl(path, max_line_bytes=1000)
    assert next(records)[0] == {"a": 1}
    with pytest.raises(ConfigError, match=rf"^{path}:2: a line longer than 1000 bytes"):
        next(records)


def test_a_line_exactly_at_the_limit_is_read(tmp_path):
    path = tmp_path / "edge.jsonl"
    line = json.dumps({"t": "y" * 20})
    path.write_text(line + "\n")
    assert list(read_jsonl(path, max_line_bytes=len(line) + 1)) == [({"t": "y" * 20}, f"{path}:1")]


def test_a_missing_file_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        list(read_jsonl(tmp_path / "none.jsonl"))


def test_a_partial_last_line_of_a_live_file_can_be_left_out(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2, "lo')
    assert [r for r, _ in read_jsonl(path, skip_partial_last=True)] == [{"step": 1}]
    with pytest.raises(ConfigError, match=":2: not valid JSON"):
        list(read_jsonl(path))


def test_latest_history_sees_each_step_once_after_a_resume():
    logged = [{"step": 1, "loss": 5.0}, {"step": 2, "loss": 4.0}, {"step": 2, "sample_0": "x"},
              {"step": 3, "loss": 3.5}, {"step": 2, "loss": 4.1}, {"step": 3, "loss": 3.4}, {"note": "no step"}]
    assert latest_history(logged) == [{"step": 1, "loss": 5.0}, {"step": 2, "loss": 4.1}, {"step": 3, "loss": 3.4}]


def test_a_best_effort_reader_leaves_damaged_lines_out(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"step": 1}\nnot json\n\xff\xfe\n{"step": 2}\n')
    assert [r for r, _ in read_jsonl(path, skip_invalid=True)] == [{"step": 1}, {"step": 2}]

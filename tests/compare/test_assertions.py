"""Each assertion kind on replies written here, and promptfoo's CSV `__expected` cells."""

from __future__ import annotations

import importlib.util

import pytest

from rung_compare.assertions import check, parse_assertion
from rung_compare.cases import read_cases

VARS = {"city": "Paris", "n": 3}


def verdict(raw, output):
    assertion = parse_assertion(raw, "suite.yaml:1: tests[0].assert[0]", lambda value, where: "judge")
    return check(assertion, output, VARS, "the prompt", "cases.jsonl:1")


@pytest.mark.parametrize("raw, output, passed", [
    ({"type": "equals", "value": "{{city}}"}, " Paris\n", True),
    ({"type": "equals", "value": "{{city}}"}, "Paris!", False),
    ({"type": "contains", "value": "{{city}}"}, "It is Paris.", True),
    ({"type": "contains", "value": "{{city}}"}, "It is paris.", False),
    ({"type": "icontains", "value": "{{city}}"}, "It is PARIS.", True),
    ({"type": "not-icontains", "value": "{{city}}"}, "It is PARIS.", False),
    ({"type": "starts-with", "value": "It"}, "  It is", True),
    ({"type": "regex", "value": r"^\d+ {{city}}$"}, "12 Paris", True),
    ({"type": "regex", "value": r"^\d+$"}, "12 Paris", False),
    ({"type": "is-json"}, '{"a": [1, 2]}', True),
    ({"type": "is-json"}, "{'a': 1}", False),
    ({"type": "json-schema", "value": {"type": "object", "required": ["a"]}}, '{"a": 1}', True),
    ({"type": "json-schema", "value": {"type": "object", "required": ["a"]}}, '{"b": 1}', False),
    ({"type": "is-json", "value": {"type": "array", "items": {"type": "integer"}}}, "[1, 2.5]", False),
    ({"type": "python"}, "```python\ndef f(x):\n    return x\n```", True),
    ({"type": "python"}, "def f(x) return x", False),
    ({"reward": "exact_match", "value": "{{city}}"}, "Paris", True),
    ({"reward": "exact_match", "value": "{{city}}", "ignore_case": True}, "paris", True),
    ({"reward": "exact_match", "value": "{{city}}"}, "paris", False),
    ({"type": "not-python"}, "def f(x) return x", True),
])
def test_each_kind(raw, output, passed):
    assert verdict(raw, output).passed is passed


def test_a_failed_verdict_says_why_and_a_score_meets_its_threshold():
    failed = verdict({"type": "contains", "value": "{{city}}"}, "Lyon")
    assert failed.reason == "expected contains 'Paris'"
    low = verdict({"reward": "exact_match", "value": "x", "threshold": 0.0}, "y")
    assert low.passed and low.score == 0.0


def test_json_schema_without_the_jsonschema_package():
    if importlib.util.find_spec("jsonschema") is not None:
        pytest.skip("jsonschema is installed here: it validates instead of the small validator")
    from rung_compare.schema_check import validate

    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0},
                                               "tags": {"type": "array", "items": {"enum": ["a", "b"]}}},
              "required": ["n"], "additionalProperties": False}
    assert validate({"n": 3, "tags": ["a"]}, schema) is None
    assert validate({}, schema) == "$: 'n' is required"
    assert validate({"n": -1}, schema) == "$.n: -1 breaks minimum 0"
    assert validate({"n": 1, "m": 2}, schema) == "$: 'm' is not allowed"
    assert validate({"n": 1, "tags": ["c"]}, schema) == "$.tags[0]: 'c' is not one of ['a', 'b']"


def test_csv_cells_become_variables_and_expected_assertions(tmp_path):
    path = tmp_path / "cases.csv"
    path.write_text('city,__expected,__expected2,__description\n'
                    'Paris,contains: Par,not-regex: \\d,first\n'
                    'Lyon,Lyon,is-json,\n')
    first, second = read_cases(path, "suite.yaml:3: cases")
    assert first.where == f"{path}:2" and second.where == f"{path}:3"
    assert first.data == {"vars": {"city": "Paris"}, "description": "first",
                          "assert": [{"type": "contains", "value": "Par"}, {"type": "not-regex", "value": "\\d"}]}
    assert second.data["assert"] == [{"type": "equals", "value": "Lyon"}, {"type": "is-json"}]

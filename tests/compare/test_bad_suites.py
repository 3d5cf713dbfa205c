"""A bad suite or cases file is one line naming the file and line, before any request is sent."""

from __future__ import annotations

import pytest

from rung.errors import ConfigError

from rung_compare.suite import load_suite

GOOD_BACKEND = "{name: openai, model: gpt-test, base_url: 'http://127.0.0.1:9/v1', api_key: k}"


def suite_text(prompts='["Say {{word}}"]', backends=f"[{GOOD_BACKEND}]", tests="[{vars: {word: hi}}]",
               extra=""):
    return f"prompts: {prompts}\nbackends: {backends}\ntests: {tests}\n{extra}"


@pytest.mark.parametrize("text, line, words", [
    (suite_text(extra="providers: []\n"), 4, "rung calls these 'backends'"),
    (suite_text(extra="promts: []\n"), 4, "did you mean prompts"),
    (suite_text(prompts='["Say {{word"]'), 1, "bad Jinja"),
    (suite_text(prompts='["Say {{colour}}"]'), 1, "'colour' is undefined (test case"),
    (suite_text(backends="[{name: nosuch}]"), 2, "nosuch"),
    (suite_text(backends="[{name: openai, model: gpt-test, temprature: 1}]"), 2, "temprature"),
    (suite_text(backends=f"[{GOOD_BACKEND[:-1]}, concurrency: 0}}]"), 2, "concurrency"),
    ("prompts: [hi]\nbackends:\n  - name: openai\n    model: gpt-test\n    api_key: k\n    prices: {prompt: -1}\n"
     "tests: [{vars: {}}]\n", 6, "prices.prompt"),
    (suite_text(tests="[{vars: {word: hi}, assert: [{type: containz, value: x}]}]"), 3, "did you mean contains"),
    (suite_text(tests="[{vars: {word: hi}, assert: [{type: regex, value: '(unclosed'}]}]"), 3,
     "not a regular expression"),
    (suite_text(tests="[{vars: {word: hi}, assert: [{judge: 'ok?'}]}]"), 3, "a judge needs a backend"),
    (suite_text(tests="[{vars: {word: hi}, assert: [{judge: 'ok?', backend: nobody}]}]"), 3,
     "no backend is labelled 'nobody'"),
    (suite_text(tests="[{vars: {word: hi}, assert: [{reward: no_such_reward}]}]"), 3, "no_such_reward"),
    (suite_text(tests="[{vars: {word: hi}, asserts: []}]"), 3, "unknown test case key"),
    (suite_text(tests="[{vars: {word: hi}, assert: [{type: json-schema, value: {type: object, "
                      "patternProperties: {}}}]}]"), 3, "patternProperties"),
    (suite_text(tests="[]"), 3, "no test cases"),
    ("prompts: [a\n", 2, "invalid YAML"),
])
def test_one_line_naming_file_and_line(tmp_path, text, line, words):
    path = tmp_path / "suite.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_and_render(path)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{path}:{line}:"), message
    assert words in message, message


def load_and_render(path):
    from rung_compare.runner import render_all

    return render_all(load_suite(path))


@pytest.mark.parametrize("content, where, words", [
    ('{"vars": {"word": "a"}}\n[1, 2]\n', ":2:", "a test case is a JSON object"),
    ('{"vars": {"word": "a"}}\n{"vars": \n', ":2:", "JSON"),
    ('{"vars": {"word": "a"}, "asert": []}\n', ":1:", "unknown test case key 'asert'"),
    ('{"vars": {"word": "a"}, "assert": [{"type": "regex", "value": "["}]}\n', ":1:", "not a regular expression"),
])
def test_a_bad_cases_file_names_its_line(tmp_path, content, where, words):
    (tmp_path / "cases.jsonl").write_text(content)
    path = tmp_path / "suite.yaml"
    path.write_text(suite_text(tests="cases.jsonl"))
    with pytest.raises(ConfigError) as caught:
        load_and_render(path)
    message = str(caught.value)
    assert "\n" not in message and f"cases.jsonl{where}" in message and words in message, message


def test_a_csv_row_with_too_many_cells(tmp_path):
    (tmp_path / "cases.csv").write_text("word\nhi\nhi,there\n")
    path = tmp_path / "suite.yaml"
    path.write_text(suite_text(tests="cases.csv"))
    with pytest.raises(ConfigError, match=r"cases\.csv:3: more cells than the header"):
        load_suite(path)


def test_the_cli_prints_one_line_and_exits_2(compare_cli, tmp_path):
    (tmp_path / "suite.yaml").write_text(suite_text(prompts='["Say {{colour}}"]'))
    proc = compare_cli("suite.yaml", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "suite.yaml:1: prompts[0]: 'colour' is undefined" in lines[0], proc.stderr

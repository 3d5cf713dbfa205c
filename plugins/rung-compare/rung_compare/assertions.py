"""Assertions: what a reply must satisfy, parsed from the suite and checked against a reply.

Kinds (promptfoo's names; `not-` before any of them inverts it):

  equals, contains, icontains, starts-with, regex   text checks; `value` is Jinja over the vars
  is-json                                           the reply parses as JSON (a `value` schema: fits it)
  json-schema                                       the reply is JSON fitting the schema `value`
  python                                            the reply parses as Python (rung-eval's registered
                                                    `python_parses` reward, through the registry)
  reward                                            any registered reward function: `{reward: exact_match,
                                                    value: REFERENCE, threshold: 1.0, ...its options}`
  judge, llm-rubric                                 a prompt sent to a judge backend: passes when its
                                                    answer says yes, or gives a score >= threshold
"""

from __future__ import annotations

import difflib
import inspect
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rung.errors import ConfigError, PluginError

from rung_compare.prompts import compile_text, render_text
from rung_compare.schema_check import schema_problems, validate

TEXT_KINDS = ("equals", "contains", "icontains", "starts-with", "regex")
KINDS = (*TEXT_KINDS, "is-json", "json-schema", "python", "reward", "judge", "llm-rubric")
# The grading prompt of `llm-rubric` (promptfoo's name for a rubric a judge model checks).
RUBRIC_PROMPT = ("Grade an answer against a rubric.\n\nRubric: {{rubric}}\n\nAnswer:\n{{output}}\n\n"
                 "Does the answer satisfy the rubric? Reply with yes or no first, then one sentence why.")
JUDGE_ANSWER = "\n\nAnswer:\n{{output}}"  # appended to a judge prompt that never shows the reply
YES_NO = re.compile(r"\b(yes|no|pass|fail|true|false|correct|incorrect)\b", re.I)
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


@dataclass(frozen=True)
class Verdict:
    """The outcome of one assertion on one reply."""

    kind: str
    passed: bool
    score: float | None = None
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"type": self.kind, "pass": self.passed, "score": self.score, "reason": self.reason}


@dataclass(frozen=True)
class Assertion:
    """One parsed assertion; `where` is its place in the suite or cases file."""

    kind: str
    where: str
    value: Any = None  # compiled Jinja for text values, a schema for json-schema
    threshold: float | None = None
    negate: bool = False
    reward: Mapping[str, Any] = field(default_factory=dict)  # {name, options...} for reward / python
    judge_backend: str | None = None  # a backend label (judge, llm-rubric)

    @property
    def name(self) -> str:
        base = f"reward:{self.reward['name']}" if self.kind == "reward" else self.kind
        return f"not-{base}" if self.negate else base

    @property
    def is_judge(self) -> bool:
        return self.kind in ("judge", "llm-rubric")


def parse_assertion(raw: Any, where: str, judge_label: Any) -> Assertion:
    """An `assert:` item as an Assertion. `judge_label(value, where)` turns a judge's `backend:`
    (a label, a section, or None for the suite's `judge:`) into a backend label."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: an assertion is a mapping such as {{type: contains, value: Paris}}")
    raw = dict(raw)
    if "reward" in raw and "type" not in raw:
        raw["type"], raw["name"] = "reward", raw.pop("reward")
    if "judge" in raw and "type" not in raw:
        raw["type"], raw["value"] = "judge", raw.pop("judge")
    kind = raw.pop("type", None)
    if not isinstance(kind, str):
        raise ConfigError(f"{where}: an assertion needs a type ({', '.join(KINDS)}), or reward: NAME, or judge: PROMPT")
    negate = kind.startswith("not-")
    kind = kind[4:] if negate else kind
    if kind not in KINDS:
        close = difflib.get_close_matches(kind, KINDS, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"{where}.type: unknown assertion '{kind}'{hint}; known: {', '.join(KINDS)}")
    threshold = raw.pop("threshold", None)
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))):
        raise ConfigError(f"{where}.threshold: a number")
    value = raw.pop("value", None)
    common = {"kind": kind, "where": where, "negate": negate,
              "threshold": None if threshold is None else float(threshold)}
    if kind == "reward":
        name = raw.pop("name", None)
        if not isinstance(name, str):
            raise ConfigError(f"{where}: reward: NAME names a registered reward function")
        section = {"name": name, **raw}
        check_reward(section, where)
        compiled = None if value is None else compile_text(str(value), f"{where}.value")
        return Assertion(value=compiled, reward=section, **common)
    if kind in ("judge", "llm-rubric"):
        backend = raw.pop("backend", None)
        _no_more(raw, where, kind)
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{where}: a {kind} assertion needs its prompt as text (value: ...)")
        text = RUBRIC_PROMPT.replace("{{rubric}}", value) if kind == "llm-rubric" else value
        if "output" not in text:
            text += JUDGE_ANSWER
        return Assertion(value=compile_text(text, f"{where}.value"), judge_backend=judge_label(backend, where),
                         **common)
    _no_more(raw, where, kind)
    if kind == "python":
        section = {"name": "python_parses"}
        check_reward(section, where)
        return Assertion(reward=section, **common)
    if kind in ("is-json", "json-schema"):
        if kind == "json-schema" and value is None:
            raise ConfigError(f"{where}: json-schema needs the schema as value")
        if value is not None:
            schema_problems(value, f"{where}.value")
        return Assertion(value=value, **common)
    if value is None:
        raise ConfigError(f"{where}: {kind} needs a value")
    text = str(value)
    if kind == "regex" and "{{" not in text and "{%" not in text:
        _compile_regex(text, f"{where}.value")
    return Assertion(value=compile_text(text, f"{where}.value"), **common)


def _no_more(raw: Mapping[str, Any], where: str, kind: str) -> None:
    if raw:
        raise ConfigError(f"{where}.{sorted(raw)[0]}: a {kind} assertion has no such key")


def _compile_regex(pattern: str, where: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"{where}: not a regular expression: {exc}") from None


_rewards: dict[str, Any] = {}


def check_reward(section: Mapping[str, Any], where: str) -> Any:
    """The reward function `section` names, built once (an unknown name or option: one line)."""
    key = json.dumps(section, sort_keys=True, default=str)
    if key not in _rewards:
        from rung.plugins import get_plugins
        from rung.runner import build, validate_section

        plugins = get_plugins()
        try:
            options = validate_section(plugins.registry, "reward_function", section, where)
        except PluginError as exc:
            hint = " (python_parses comes with rung-eval: pip install rung-eval)" if section["name"] == \
                "python_parses" else ""
            raise ConfigError(f"{where}: {exc}{hint}") from None
        _rewards[key] = build(plugins, "reward_function", options)
    return _rewards[key]


def takes_prompt(fn: Any) -> bool:
    """Whether a reward function accepts `prompt=` (by name, or through **kwargs)."""
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "prompt" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def check(assertion: Assertion, output: str, variables: Mapping[str, Any], prompt_text: str,
          case_where: str) -> Verdict:
    """The verdict of every kind but the judges' on `output`."""
    verdict = _check(assertion, output, variables, prompt_text, case_where)
    if assertion.negate:
        return Verdict(assertion.name, not verdict.passed, verdict.score,
                       "" if not verdict.passed else f"should not have: {verdict.reason or 'it held'}")
    return verdict


def _value(assertion: Assertion, variables: Mapping[str, Any], case_where: str) -> str:
    return render_text(assertion.value, variables, assertion.where, case_where)


def _check(a: Assertion, output: str, variables: Mapping[str, Any], prompt_text: str, case_where: str) -> Verdict:
    name = a.name
    if a.kind in TEXT_KINDS:
        expected = _value(a, variables, case_where)
        if a.kind == "equals":
            ok = output.strip() == expected.strip()
        elif a.kind == "contains":
            ok = expected in output
        elif a.kind == "icontains":
            ok = expected.lower() in output.lower()
        elif a.kind == "starts-with":
            ok = output.lstrip().startswith(expected)
        else:
            ok = _compile_regex(expected, f"{a.where}.value (test case {case_where})").search(output) is not None
        shown = expected if len(expected) <= 60 else expected[:57] + "..."
        return Verdict(name, ok, float(ok), "" if ok else f"expected {a.kind} {shown!r}")
    if a.kind in ("is-json", "json-schema"):
        try:
            data = json.loads(output)
        except ValueError as exc:
            return Verdict(name, False, 0.0, f"not JSON: {exc}")
        if a.value is None:
            return Verdict(name, True, 1.0)
        problem = validate(data, a.value)
        return Verdict(name, problem is None, float(problem is None), problem or "")
    if a.kind in ("python", "reward"):
        fn = check_reward(a.reward, a.where)
        reference = None if a.value is None else _value(a, variables, case_where)
        score = float(fn(output, reference, prompt=prompt_text) if takes_prompt(fn) else fn(output, reference))
        threshold = 1.0 if a.threshold is None else a.threshold
        ok = score >= threshold
        return Verdict(name, ok, score, "" if ok else f"score {score:g} < {threshold:g}")
    raise AssertionError(f"{a.kind} is checked by its judge")


def judge_prompt(a: Assertion, output: str, variables: Mapping[str, Any], case_where: str) -> str:
    """The text sent to the judge backend for `output`."""
    return render_text(a.value, {**variables, "output": output}, a.where, case_where)


def judge_verdict(a: Assertion, answer: str) -> Verdict:
    """Pass when the judge says yes (or, with a threshold, its first number reaches it)."""
    if a.threshold is not None:
        match = NUMBER.search(answer)
        if match is None:
            verdict = Verdict(a.kind, False, None, f"the judge gave no score: {answer[:80]!r}")
        else:
            score = float(match.group())
            ok = score >= a.threshold
            verdict = Verdict(a.kind, ok, score, "" if ok else f"judge score {score:g} < {a.threshold:g}")
    else:
        match = YES_NO.search(answer)
        ok = match is not None and match.group(1).lower() in ("yes", "pass", "true", "correct")
        verdict = Verdict(a.kind, ok, float(ok), "" if ok else f"the judge said: {answer[:80]!r}")
    if a.negate:
        return Verdict(a.name, not verdict.passed, verdict.score, "" if not verdict.passed else "the judge agreed")
    return Verdict(a.name, verdict.passed, verdict.score, verdict.reason)

"""`rung compare` end to end as a user runs it: 3 prompts x 2 backends (the fake OpenAI and
Anthropic servers) x 20 cases from a JSONL file. The expected pass table is computed here, in
plain Python, from what the fake server is known to answer ("echo: " + the last user text,
one token per space-separated word, cut at max_tokens), never from rung-compare's own code."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from rung_compare.assertions import Verdict
from rung_compare.cache import ReplyCache
from rung_compare.report import to_json
from rung_compare.runner import run_suite
from rung_compare.suite import load_suite

from tests.fake_llm_server import TEST_KEY as KEY

WORDS = ["apple", "river", "stone", "cloud", "maple", "tiger", "ocean", "ember", "flint", "cedar",
         "lotus", "raven", "amber", "delta", "frost", "grove", "heron", "ivory", "jade", "koala"]
# The prompts as the suite writes them (Jinja), and the same texts made here without Jinja.
PROMPTS = ["Say {{word}} please", "{{word|upper}} and {{number}}", "{{number}}"]
RENDER = [lambda v: f"Say {v['word']} please", lambda v: f"{v['word'].upper()} and {v['number']}",
          lambda v: f"{v['number']}"]
ANTHROPIC_MAX_TOKENS = 3


def case_vars(i: int) -> dict:
    return {"word": WORDS[i], "number": i * 7 % 23}


def case_assert(i: int) -> list:
    """Each case adds one assertion to the suite's default (icontains the word), in rotation."""
    return [[{"type": "regex", "value": r"\d"}],
            [{"type": "contains", "value": "please"}],
            [{"type": "not-contains", "value": "{{word|upper}}"}],
            [{"type": "python"}],
            [{"reward": "exact_match", "value": "echo: Say {{word}} please"}]][i % 5]


def fake_reply(text: str, max_tokens: int | None = None) -> str:
    """What the fake server answers to the user text `text`."""
    tokens = [w + " " for w in ("echo: " + text).split(" ")]
    tokens[-1] = tokens[-1][:-1]
    tokens = [t for t in tokens if t]
    return "".join(tokens if max_tokens is None else tokens[:max_tokens])


def parses(text: str) -> bool:
    try:
        ast.parse(text)
    except SyntaxError:
        return False
    return bool(text.strip())


def expected_pass(reply: str, i: int) -> bool:
    v = case_vars(i)
    ok = v["word"].lower() in reply.lower()  # defaultTest: icontains the word
    extra = i % 5
    if extra == 0:
        ok &= re.search(r"\d", reply) is not None
    elif extra == 1:
        ok &= "please" in reply
    elif extra == 2:
        ok &= v["word"].upper() not in reply
    elif extra == 3:
        ok &= parses(reply)
    else:
        ok &= reply.strip() == f"echo: Say {v['word']} please"
    return ok


def write_suite(folder: Path, server, words=WORDS) -> Path:
    with (folder / "cases.jsonl").open("w") as f:
        for i in range(20):
            f.write(json.dumps({"vars": {**case_vars(i), "word": words[i]}, "assert": case_assert(i)}) + "\n")
    suite = {
        "description": "echo table",
        "prompts": PROMPTS,
        "backends": [
            {"name": "openai", "model": "gpt-test", "base_url": server.openai_base_url, "label": "oa",
             "concurrency": 4, "prices": {"prompt": 0.5, "completion": 1.5}},
            {"name": "anthropic", "model": "claude-test", "base_url": server.anthropic_base_url, "label": "an",
             "concurrency": 3, "sampling": {"max_tokens": ANTHROPIC_MAX_TOKENS}},
        ],
        "defaultTest": {"assert": [{"type": "icontains", "value": "{{word}}"}]},
        "cases": "cases.jsonl",
    }
    path = folder / "suite.yaml"
    path.write_text(json.dumps(suite, indent=1))  # JSON is YAML
    return path


def expected_table() -> dict:
    table = {}
    for p, render in enumerate(RENDER):
        for label, max_tokens in (("oa", None), ("an", ANTHROPIC_MAX_TOKENS)):
            table[(PROMPTS[p], label)] = [expected_pass(fake_reply(render(case_vars(i)), max_tokens), i)
                                          for i in range(20)]
    return table


def test_the_pass_table_is_what_the_server_answers_and_a_rerun_asks_nothing(compare_cli, server, tmp_path,
                                                                           monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)  # for the runs in this process (the CLI's environment has it)
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    suite = write_suite(tmp_path, server)
    expected = expected_table()
    counts = {key: sum(flags) for key, flags in expected.items()}
    assert len(set(counts.values())) >= 3 and max(counts.values()) < 20  # a table worth checking

    first = compare_cli(str(suite), "--json", "out.json", "--html", "out.html", check=False)
    failing = 3 * 2 * 20 - sum(counts.values())
    assert first.returncode == 1 and f"{failing} of 120 results failed" in first.stderr  # reports written first
    assert len(server.requests) == 3 * 2 * 20
    assert {r.path for r in server.requests} == {"/v1/chat/completions", "/v1/messages"}
    out = json.loads((tmp_path / "out.json").read_text())
    summary = {(c["prompt"], c["backend"]): c for c in out["summary"]}
    assert {key: c["passed"] for key, c in summary.items()} == counts
    for result in out["results"]:
        key = (result["prompt"], result["backend"])
        assert result["pass"] == expected[key][result["case"]], result
        max_tokens = ANTHROPIC_MAX_TOKENS if result["backend"] == "an" else None
        assert result["output"] == fake_reply(RENDER[PROMPTS.index(result["prompt"])](result["vars"]), max_tokens)
    for (prompt, label), count in counts.items():  # the terminal table shows every rate
        assert f"{count / 20:.0%} ({count}/20)" in first.stdout
    oa = summary[(PROMPTS[0], "oa")]
    texts = [RENDER[0](case_vars(i)) for i in range(20)]  # the fake server counts a token per word
    assert (oa["prompt_tokens"], oa["completion_tokens"]) == (sum(len(t.split()) for t in texts),
                                                              sum(len(fake_reply(t).split()) for t in texts))
    assert oa["cost"] == pytest.approx((oa["prompt_tokens"] * 0.5 + oa["completion_tokens"] * 1.5) / 1000)
    assert summary[(PROMPTS[0], "an")]["cost"] is None  # no prices given
    assert out["asked"] == {"oa": 60, "an": 60} and out["cached"] == {"oa": 0, "an": 0}

    server.reset()
    second = compare_cli(str(suite), "--json", "again.json", "--exit-zero")  # exit 0 whatever failed
    assert server.requests == []  # every reply came from the cache
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["asked"] == {"oa": 0, "an": 0} and again["cached"] == {"oa": 60, "an": 60}
    assert [(r["output"], r["pass"]) for r in again["results"]] == [(r["output"], r["pass"]) for r in out["results"]]
    assert "0 requests asked, 120 replies from the cache" in " ".join(second.stderr.split())

    changed = list(WORDS)
    changed[7] = "zebra"  # one case changes: the two prompts using {{word}} ask again, on both backends
    write_suite(tmp_path, server, changed)
    cache = ReplyCache(tmp_path / ".rung-compare-cache")  # the CLI's default folder, beside the suite
    server.reset()
    run_suite(load_suite(suite), cache)
    assert sorted(_user_text(r) for r in server.requests) == sorted(["Say zebra please", "ZEBRA and 3"] * 2)

    server.reset()
    run_suite(load_suite(suite), ReplyCache(cache.folder, read=False))  # --no-cache: everything asked again
    assert len(server.requests) == 120
    written = b"".join(p.read_bytes() for p in cache.folder.rglob("*.json"))
    assert written and KEY.encode() not in written
    for name in ("out.json", "out.html"):
        assert KEY not in (tmp_path / name).read_text()


def _user_text(recorded) -> str:
    content = recorded.body["messages"][-1]["content"]
    return content if isinstance(content, str) else " ".join(part["text"] for part in content)


def test_judges_ask_a_backend_and_are_cached_too(server, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    suite = tmp_path / "judged.yaml"
    suite.write_text(f"""
prompts: ["Say {{{{word}}}} please", "{{{{word}}}}"]
backends:
  - {{name: openai, model: gpt-test, base_url: "{server.openai_base_url}", label: oa}}
  - {{name: anthropic, model: claude-test, base_url: "{server.anthropic_base_url}", label: judge}}
judge: judge
tests:
  - vars: {{word: tea}}
    assert:
      - judge: "Score: {{{{ 9 if 'please' in output else 2 }}}}"
        threshold: 5
      - judge: "{{{{ 'yes' if word in output else 'no' }}}}, says the judge"
  - vars: {{word: milk}}
    assert:
      - type: llm-rubric
        value: the reply says please
""")
    cache = ReplyCache(tmp_path / "cache")
    out = to_json(run_suite(load_suite(suite), cache))
    by = {(r["prompt"], r["backend"], r["case"]): r for r in out["results"]}
    judged = by[("Say {{word}} please", "oa", 0)]["assertions"]
    assert [a["pass"] for a in judged] == [True, True] and judged[0]["score"] == 9.0
    assert [a["pass"] for a in by[("{{word}}", "oa", 0)]["assertions"]] == [False, True]
    # llm-rubric's grading prompt asks "Reply with yes or no": the echoing judge's first such word is "yes"
    assert by[("{{word}}", "oa", 1)]["assertions"][0]["pass"] is True
    sent = [_user_text(r) for r in server.requests if r.path == "/v1/messages"]
    replies = ["Say tea please", "tea", "Say milk please", "milk"]  # the judge backend is also a column
    judge_texts = sorted(set(sent) - set(replies))
    # One request per distinct judge prompt: the two backends' equal replies are judged once.
    assert sorted(sent) == sorted(replies + judge_texts) and len(judge_texts) == 5
    assert {"Score: 9", "Score: 2", "yes, says the judge"} < set(judge_texts)
    assert sum("Rubric: the reply says please" in t for t in judge_texts) == 2
    server.reset()
    again = run_suite(load_suite(suite), cache)
    assert server.requests == [] and [r.verdicts for r in again.results] == [
        [_verdict(a) for a in r["assertions"]] for r in out["results"]]


def _verdict(data: dict) -> Verdict:
    return Verdict(data["type"], data["pass"], data["score"], data["reason"])


def test_a_suite_whose_every_case_passes_exits_0(compare_cli, server, tmp_path):
    suite = {"prompts": ["Say {{word}}"], "defaultTest": {"assert": [{"type": "icontains", "value": "{{word}}"}]},
             "backends": [{"name": "openai", "model": "gpt-test", "base_url": server.openai_base_url, "label": "oa"}],
             "tests": [{"vars": {"word": w}} for w in WORDS[:3]]}
    (tmp_path / "suite.yaml").write_text(json.dumps(suite))
    passed = compare_cli("suite.yaml")  # asserts exit 0
    assert "100% (3/3)" in passed.stdout and "results failed" not in passed.stderr
    suite["tests"].append({"vars": {"word": "x"}, "assert": [{"type": "equals", "value": "not what it says"}]})
    (tmp_path / "suite.yaml").write_text(json.dumps(suite))
    one_failed = compare_cli("suite.yaml", check=False)
    assert one_failed.returncode == 1 and "1 of 4 results failed" in one_failed.stderr
    assert "Traceback" not in one_failed.stderr

"""A suite run end to end: render every request, ask what the cache lacks, check every reply.

Every prompt x backend x case is rendered first (a missing variable stops the run before any
request is sent). Identical requests to one backend are asked once. Judge assertions are a
second round: their prompts hold the replies, so they are asked after them, through the
same cache and concurrency. Backends are built only when they have something to ask: a
rerun with everything cached loads no model.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rung.records import GenerationRequest, Message

from rung_compare.assertions import Verdict, check, judge_prompt, judge_verdict
from rung_compare.cache import ReplyCache, request_key
from rung_compare.execute import Reply, Work, ask_all, concurrency_of
from rung_compare.suite import BackendSpec, Case, Suite


@dataclass
class Result:
    """One reply of one backend to one prompt for one case, and its verdicts."""

    prompt: str
    backend: str
    case: Case
    request: GenerationRequest
    key: str
    reply: Reply = field(default_factory=Reply)
    verdicts: list[Verdict] = field(default_factory=list)
    cost: float | None = None

    @property
    def passed(self) -> bool:
        return self.reply.error is None and all(v.passed for v in self.verdicts)

    @property
    def prompt_text(self) -> str:
        """The rendered prompt: the last user turn (what the report shows)."""
        return self.request.messages[-1].content if self.request.messages else self.request.prompt or ""


@dataclass
class Run:
    """Everything a report needs."""

    suite: Suite
    results: list[Result]
    wall_s: float
    asked: dict[str, int]  # backend label -> requests sent (judges included under their backend)
    cached: dict[str, int]  # backend label -> replies taken from the cache


class Asker:
    """Asks backends for what the cache lacks, building each backend on first need."""

    def __init__(self, suite: Suite, cache: ReplyCache, concurrency: int | None, progress: bool) -> None:
        self.suite, self.cache, self.concurrency, self.show_progress = suite, cache, concurrency, progress
        self.instances: dict[str, Any] = {}
        self.asked: dict[str, int] = {}
        self.cached: dict[str, int] = {}

    def instance(self, spec: BackendSpec) -> Any:
        if spec.label not in self.instances:
            from rung.plugins import get_plugins
            from rung.runner import build

            self.instances[spec.label] = build(get_plugins(), "backend", spec.section)
        return self.instances[spec.label]

    def answers(self, wanted: Mapping[str, Mapping[str, GenerationRequest]], what: str) -> dict[tuple[str, str], Reply]:
        """Replies for `wanted[label][key]`: from the cache, else asked (and then cached)."""
        replies: dict[tuple[str, str], Reply] = {}
        works = []
        for label, requests in wanted.items():
            missing = {}
            for key, request in requests.items():
                record = self.cache.get(key)
                if record is not None:
                    replies[(label, key)] = Reply.from_record(record)
                else:
                    missing[key] = request
            self.cached[label] = self.cached.get(label, 0) + len(requests) - len(missing)
            self.asked[label] = self.asked.get(label, 0) + len(missing)
            if missing:
                spec = self.suite.backend(label)
                works.append(Work(label, self.instance(spec), concurrency_of(spec.concurrency, self.concurrency,
                                                                             spec.section), missing))
        total = sum(len(w.requests) for w in works)
        from rung.console import progress

        with progress(total, what, "replies", enabled=self.show_progress and total > 0) as bar:
            def done(label: str, key: str, reply: Reply) -> None:
                replies[(label, key)] = reply
                if reply.error is None:
                    self.cache.put(key, reply.record())
                bar.advance()

            ask_all(works, done)
        return replies

    def close(self) -> None:
        for instance in self.instances.values():
            close = getattr(instance, "close", None)
            if callable(close):
                close()


def run_suite(suite: Suite, cache: ReplyCache, concurrency: int | None = None, progress: bool = False) -> Run:
    """Run `suite`: the replies (cached or asked), every assertion checked."""
    began = time.perf_counter()
    results = render_all(suite)
    asker = Asker(suite, cache, concurrency, progress)
    try:
        wanted: dict[str, dict[str, GenerationRequest]] = {}
        for result in results:
            wanted.setdefault(result.backend, {})[result.key] = result.request
        replies = asker.answers(wanted, "asking")
        judge_wanted: dict[str, dict[str, GenerationRequest]] = {}
        pending: list[tuple[Result, int, str, str]] = []  # result, verdict index, judge label, key
        for result in results:
            result.reply = replies[(result.backend, result.key)]
            spec = suite.backend(result.backend)
            result.cost = spec.cost(result.reply.prompt_tokens, result.reply.completion_tokens)
            if result.reply.error is not None:
                continue
            for assertion in result.case.assertions:
                if assertion.is_judge:
                    text = judge_prompt(assertion, result.reply.text, result.case.vars, result.case.where)
                    judge = suite.backend(assertion.judge_backend)
                    request = GenerationRequest(messages=(Message("user", text),), **judge_sampling(judge))
                    key = request_key(judge.identity, request)
                    judge_wanted.setdefault(judge.label, {})[key] = request
                    pending.append((result, len(result.verdicts), judge.label, key))
                    result.verdicts.append(Verdict(assertion.name, False, None, "judged below"))
                else:
                    result.verdicts.append(check(assertion, result.reply.text, result.case.vars, result.prompt_text,
                                                 result.case.where))
        if judge_wanted:
            judged = asker.answers(judge_wanted, "judging")
            for result, index, label, key in pending:
                assertion = result.case.assertions[index]  # one verdict per assertion, in order
                answer = judged[(label, key)]
                if answer.error is not None:
                    result.verdicts[index] = Verdict(assertion.name, False, None, f"the judge failed: {answer.error}")
                else:
                    result.verdicts[index] = judge_verdict(assertion, answer.text)
    finally:
        asker.close()
    return Run(suite, results, time.perf_counter() - began, asker.asked, asker.cached)


def judge_sampling(judge: BackendSpec) -> dict[str, Any]:
    """A judge samples as its backend entry's `sampling` says (else the backend's defaults: some
    APIs refuse a temperature, so none is forced)."""
    out: dict[str, Any] = dict(judge.sampling)
    if "stop" in out:
        out["stop"] = tuple(out["stop"])
    return out


def render_all(suite: Suite) -> list[Result]:
    """Every prompt x backend x case as a Result holding its request and cache key (no reply yet)."""
    out = []
    for prompt in suite.prompts:
        for spec in suite.backends:
            sampling = {**suite.sampling, **spec.sampling}
            for case in suite.cases:
                request = prompt.render(case.vars, sampling, case.where)
                out.append(Result(prompt.label, spec.label, case, request, request_key(spec.identity, request)))
    return out

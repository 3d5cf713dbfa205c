"""A suite run's figures: pass rates per prompt x backend, latency, tokens, cost; as tables and JSON."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from rung_compare.runner import Run


@dataclass
class Cell:
    """One prompt on one backend over every case."""

    prompt: str
    backend: str
    passed: int = 0
    total: int = 0
    errors: int = 0
    cached: int = 0
    latency_s: float | None = None  # mean over the replies
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float | None = None

    @property
    def pass_rate(self) -> float:
        return self.passed / self.total if self.total else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "backend": self.backend, "passed": self.passed, "total": self.total,
                "pass_rate": self.pass_rate, "errors": self.errors, "cached": self.cached,
                "latency_mean_s": self.latency_s, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "cost": self.cost}


def cells(run: Run) -> list[Cell]:
    """One Cell per prompt x backend, in the suite's order."""
    out: dict[tuple[str, str], Cell] = {}
    latencies: dict[tuple[str, str], list[float]] = {}
    for prompt in run.suite.prompts:
        for spec in run.suite.backends:
            out[(prompt.label, spec.label)] = Cell(prompt.label, spec.label)
    for result in run.results:
        key = (result.prompt, result.backend)
        cell = out[key]
        cell.total += 1
        cell.passed += result.passed
        cell.errors += result.reply.error is not None
        cell.cached += result.reply.cached
        if result.reply.error is None:
            latencies.setdefault(key, []).append(result.reply.latency_s)
            cell.prompt_tokens += result.reply.prompt_tokens
            cell.completion_tokens += result.reply.completion_tokens
        if result.cost is not None:
            cell.cost = (cell.cost or 0.0) + result.cost
    for key, values in latencies.items():
        out[key].latency_s = statistics.fmean(values)
    return list(out.values())


def rate(cell: Cell) -> str:
    """`85% (17/20)`: how the tables show a pass rate."""
    return f"{cell.pass_rate:.0%} ({cell.passed}/{cell.total})"


def money(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def tables(run: Run) -> list[Any]:
    """The rich tables the terminal shows: pass rates (prompts x backends), then the details per cell."""
    from rich.table import Table

    found = cells(run)
    backends = [b.label for b in run.suite.backends]
    title = f"rung compare: {run.suite.description}" if run.suite.description else "rung compare"
    matrix = Table(title=f"{title} — pass rate, {len(run.suite.cases)} cases")
    matrix.add_column("prompt")
    for label in backends:
        matrix.add_column(label, justify="right")
    by_key = {(c.prompt, c.backend): c for c in found}
    for prompt in run.suite.prompts:
        matrix.add_row(prompt.label, *(rate(by_key[(prompt.label, b)]) for b in backends))
    details = Table(title="per prompt and backend")
    for name, justify in (("prompt", "left"), ("backend", "left"), ("pass", "right"), ("errors", "right"),
                          ("latency", "right"), ("tokens in/out", "right"), ("cost", "right"),
                          ("cached", "right")):
        details.add_column(name, justify=justify)  # type: ignore[arg-type]
    for cell in found:
        details.add_row(cell.prompt, cell.backend, rate(cell), str(cell.errors), seconds(cell.latency_s),
                        f"{cell.prompt_tokens:,}/{cell.completion_tokens:,}", money(cell.cost),
                        f"{cell.cached}/{cell.total}")
    return [matrix, details]


def failures(run: Run, limit: int = 10) -> list[str]:
    """The first `limit` failed results, one line each (what the terminal lists under the tables)."""
    out = []
    for result in run.results:
        if result.passed:
            continue
        why = result.reply.error or "; ".join(f"{v.kind}: {v.reason}" for v in result.verdicts if not v.passed)
        out.append(f"{result.prompt} | {result.backend} | {result.case.where}: {why}")
        if len(out) == limit:
            break
    return out


def to_json(run: Run) -> dict[str, Any]:
    """What --json writes: the suite, a summary per cell, every result with its verdicts."""
    return {
        "suite": str(run.suite.path),
        "description": run.suite.description,
        "prompts": [{"label": p.label, "source": p.source} for p in run.suite.prompts],
        "backends": [{"label": b.label, "backend": b.section.name, "model": getattr(b.section, "model", None)}
                     for b in run.suite.backends],
        "cases": len(run.suite.cases),
        "wall_s": run.wall_s,
        "asked": run.asked,
        "cached": run.cached,
        "summary": [c.to_json() for c in cells(run)],
        "results": [
            {"prompt": r.prompt, "backend": r.backend, "case": r.case.index, "where": r.case.where,
             "description": r.case.description, "vars": r.case.vars, "input": r.prompt_text,
             "output": r.reply.text, "error": r.reply.error, "pass": r.passed, "latency_s": r.reply.latency_s,
             "prompt_tokens": r.reply.prompt_tokens, "completion_tokens": r.reply.completion_tokens,
             "cost": r.cost, "cached": r.reply.cached, "assertions": [v.to_json() for v in r.verdicts]}
            for r in run.results
        ],
    }

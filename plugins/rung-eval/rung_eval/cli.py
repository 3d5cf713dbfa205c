"""`rung eval`: evaluate one or several models on task specs (and lm-evaluation-harness tasks).

Every model is a column: `-b BACKEND -m MODEL` (repeat `-m` for several models of one
backend) or `-c CONFIG` (a run config's backend section; repeatable; `-m` then replaces its
model). `-o KEY=VALUE` sets a backend option on every column, as in `rung prompt`. Models are
built one at a time, so only one is in memory.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from rung.errors import RungError


@dataclass
class Column:
    """One model of the table: how to build its backend, and what the table calls it."""

    label: str
    backend: str
    model: str | None
    section: Any  # the validated backend section

    def describe(self) -> dict[str, Any]:
        return {"label": self.label, "backend": self.backend, "model": self.model}


def columns(plugins: Any, backend: str | None, models: Sequence[str], configs: Sequence[str],
            options: Sequence[str]) -> list[Column]:
    """The models to evaluate: every config (or the -b backend) with every -m model (or its own)."""
    from rung.api import backend_section

    if not configs and not backend:
        raise click.UsageError("name the model: -b BACKEND -m MODEL (e.g. -b torch -m runs/x/model) or -c CONFIG")
    out: list[Column] = []
    for config in configs or [None]:
        for model in models or [None]:
            section = backend_section(backend, model, config, options)
            name = section.name
            chosen = getattr(section, "model", None)
            label = model or (str(chosen) if chosen else Path(config).stem if config else name)
            out.append(Column(label, name, None if chosen is None else str(chosen), section))
    labels = [c.label for c in out]
    for column in out:  # one model on two backends: say which is which
        if labels.count(column.label) > 1:
            column.label = f"{column.label} ({column.backend})"
    labels = [c.label for c in out]
    for i, column in enumerate(out):  # still the same (a model listed twice): number them
        if labels.count(column.label) > 1:
            column.label = f"{column.label} #{labels[:i + 1].count(column.label)}"
    return out


def load_tasks(plugins: Any, specs: Sequence[str], limit: int | None) -> list[Any]:
    """The tasks of the spec files, `--limit` applied to those kinds that have a `limit` option."""
    from rung.config import section_model
    from rung.console import get_console
    from rung.evaluation import load_task, read_spec

    tasks = []
    for spec in specs:
        overrides = {}
        if limit is not None:
            data, _, origin = read_spec(spec, "rung eval")
            kind = str(data["kind"])
            if kind in plugins.registry.names("eval_task") and \
                    "limit" not in section_model(plugins.registry, "eval_task", kind).model_fields:
                get_console().print(f"[yellow]{origin}: a {kind} task has no limit; --limit ignored for it")
            else:
                overrides["limit"] = limit
        tasks.append(load_task(plugins.registry, spec, "rung eval", overrides))
    names = [t.name for t in tasks]
    for name in names:
        if names.count(name) > 1:
            raise RungError(f"two tasks are named '{name}'; give one a different 'name:' in its spec")
    return tasks


@click.command("eval")
@click.argument("specs", nargs=-1, metavar="TASK...")
@click.option("-b", "--backend", help="backend name: torch, hf, jax, openai (the config's, with -c)")
@click.option("-m", "--model", "models", multiple=True, help="model (a folder or a name); repeat for a column each")
@click.option("-c", "--config", "configs", multiple=True, type=click.Path(dir_okay=False),
              help="a run config whose backend section is a model to evaluate (repeatable)")
@click.option("-o", "--option", "options", multiple=True, metavar="KEY=VALUE",
              help="backend option for every model, e.g. -o device=cpu (repeatable)")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="write the results as JSON ('-': stdout)")
@click.option("--output-dir", type=click.Path(file_okay=False), help="a run folder: results.json is written there")
@click.option("--limit", type=int, help="only the first N items of each task (texts, questions, prompts)")
@click.option("--harness", "harness_tasks", metavar="TASKS",
              help="lm-evaluation-harness tasks, comma-separated (needs rung-eval[harness])")
@click.option("--include-path", type=click.Path(exists=True, file_okay=False),
              help="a folder of harness task YAMLs (--harness)")
@click.option("--num-fewshot", type=int, help="harness few-shot examples (--harness)")
@click.option("--batch-size", type=int, default=8, show_default=True, help="harness batch size (--harness)")
def eval_command(specs: tuple[str, ...], backend: str | None, models: tuple[str, ...], configs: tuple[str, ...],
                 options: tuple[str, ...], json_path: str | None, output_dir: str | None, limit: int | None,
                 harness_tasks: str | None, include_path: str | None, num_fewshot: int | None,
                 batch_size: int) -> None:
    """Evaluate models on TASK specs (YAML files: perplexity, multiple_choice, generation, ...).

    \b
    rung eval -b torch -m runs/stdlib/model examples/eval/python_text.yaml
    rung eval -b hf -m gpt2 -m distilgpt2 examples/eval/*.yaml --json results.json
    rung eval -c examples/sft_arithmetic.yaml -m runs/sft-arithmetic/model examples/eval/arith_mc.yaml
    rung eval -b torch -m runs/x/model --harness my_task --include-path tasks/
    """
    from rung.console import get_console
    from rung.plugins import get_plugins

    from rung_eval.report import results_json, results_table, write_json

    if limit is not None and limit < 1:
        raise click.UsageError("--limit is a number of items, 1 or more")
    if not specs and not harness_tasks:
        raise click.UsageError("give task specs (e.g. examples/eval/arith_mc.yaml) or --harness TASKS")
    if include_path and not harness_tasks:
        raise click.UsageError("--include-path is for --harness tasks")
    plugins = get_plugins()
    tasks = load_tasks(plugins, specs, limit)  # a bad spec stops everything before any model loads
    targets = columns(plugins, backend, models, configs, options)
    console = get_console()
    results: dict[str, dict[str, dict[str, float]]] = {task.name: {} for task in tasks}
    harness: dict[str, Any] = {}
    for column in targets:
        from rung.runner import build

        instance = build(plugins, "backend", column.section)
        for task in tasks:
            start = time.perf_counter()
            results[task.name][column.label] = {k: float(v) for k, v in task.evaluate(instance).items()}
            console.print(f"[dim]{column.label}: {task.name} ({time.perf_counter() - start:.1f} s)")
        if harness_tasks:
            harness[column.label] = run_harness_tasks(instance, harness_tasks, include_path, limit, num_fewshot,
                                                      batch_size)
        close = getattr(instance, "close", None)
        if callable(close):
            close()
        del instance
    out = results_json([c.describe() for c in targets], results, harness)
    to_stdout = json_path == "-"
    show(results_table(results, [c.label for c in targets]) if tasks else None, harness, to_stdout)
    if json_path:
        if to_stdout:
            import json

            click.echo(json.dumps(out, indent=2, default=str))
        else:
            write_json(Path(json_path), out)
    if output_dir:
        write_json(Path(output_dir) / "results.json", out)
        console.print(f"[dim]results: {Path(output_dir) / 'results.json'}")


def run_harness_tasks(backend: Any, tasks: str, include_path: str | None, limit: int | None,
                      num_fewshot: int | None, batch_size: int) -> dict[str, Any]:
    """lm-evaluation-harness's results for one backend, the parts worth keeping in JSON."""
    try:
        from rung_eval.harness import run_harness
    except ImportError as exc:
        raise RungError(f"--harness needs lm-evaluation-harness: pip install 'rung-eval[harness]' ({exc})") from None
    names = [t.strip() for t in tasks.split(",") if t.strip()]
    if not names:
        raise click.UsageError("--harness: name at least one task")
    out = run_harness(backend, names, include_path=include_path, limit=limit, num_fewshot=num_fewshot,
                      batch_size=batch_size)
    return {k: out[k] for k in ("results", "groups", "versions", "n-shot", "higher_is_better") if k in out}


def show(table: Any, harness: dict[str, Any], to_stderr: bool) -> None:
    """The results table (and lm-eval's own tables) on stdout, or stderr when stdout holds the JSON."""
    from rich.console import Console

    stream = sys.stderr if to_stderr else sys.stdout
    console = Console(file=stream, width=None if stream.isatty() else 160)
    if table is not None:
        console.print(table)
    if harness:
        from lm_eval.utils import make_table

        for label, results in harness.items():
            click.echo(f"\n{label} (lm-evaluation-harness)", file=stream)
            click.echo(make_table(results), file=stream)
            if results.get("groups"):
                click.echo(make_table(results, "groups"), file=stream)

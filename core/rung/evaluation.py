"""Evaluation tasks: how good a model is, by task kinds that plugins register.

A task kind (`perplexity`, `multiple_choice`, `generation`, ... registered through
`rung_register_eval_tasks`) is built from a task spec: a YAML file or a mapping whose `kind`
names the registered kind and whose other keys are that kind's options (validated by its
options model, so a misspelt key is an error that names the file or config path):

    kind: multiple_choice        # which registered task kind
    name: arith-mc               # the label in tables and metric names (default: the file's stem)
    path: arith.jsonl            # paths are relative to the spec's own folder

The same task runs from `rung eval` over any backend, and inside a training run: a trainer's
`eval_tasks:` (every trainer's options have it, `rung.training.TrainingOptions`) is a list of
specs, which the training loop evaluates at every evaluation step beside the trainer's own
evaluator (`tasks_evaluator`), logging `<task>/<metric>` and writing the latest results to
`eval.json` in the run folder.

A task is built as `Impl(options, base_dir=folder)` and evaluated as
`task.evaluate(backend, model)`: `model` is the framework model of a training run's
evaluation context (its current weights, eval mode), or None outside training, where the task
scores through the backend itself (its engine's objectives when it is trainable, its
`echo` + `logprobs` generation otherwise). A backend that can do neither for a task raises one
`RungError` line that says so.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol, runtime_checkable

from pydantic import Field

from rung.errors import ConfigError, RungError
from rung.options import Options

if TYPE_CHECKING:
    from rung.context import RunContext
    from rung.interfaces import Backend

Evaluator = Callable[[Any], Mapping[str, float]]


class EvalTaskOptions(Options):
    """What every task kind's options have: its label (the spec's `name`)."""

    label: str = Field("", description="the task's name in tables and metric names")


@runtime_checkable
class EvalTask(Protocol):
    """One evaluation task, built from its spec."""

    name: str  # its label: metric names are f"{name}/{metric}"

    def evaluate(self, backend: Backend, model: Any | None = None) -> dict[str, float]:
        """The task's metrics (e.g. {"accuracy": 0.8, "accuracy_norm": 0.7}) for the backend's model;
        `model`, when given, is the framework model to score (a training run's current weights)."""


def read_spec(spec: str | Path | Mapping[str, Any], where: str) -> tuple[dict[str, Any], Path, str]:
    """A task spec as (mapping, the folder its paths are relative to, where errors point).

    A string or path is a YAML file; a mapping is an inline spec (paths relative to the
    current folder). The mapping keeps `kind`; `name` defaults to the file's stem or the kind.
    """
    if isinstance(spec, Mapping):
        data, base, origin = dict(spec), Path.cwd(), where
    else:
        from rung.yaml_lines import load_yaml_with_lines

        path = Path(spec)
        if not path.is_file():
            raise ConfigError(f"{where}: no task spec at '{path}'")
        loaded, _ = load_yaml_with_lines(path)
        if not isinstance(loaded, Mapping):
            raise ConfigError(f"{path}: a task spec is a mapping with 'kind' (perplexity, multiple_choice, ...)")
        data, base, origin = dict(loaded), path.resolve().parent, str(path)
        data.setdefault("name", path.stem)
    if "kind" not in data:
        raise ConfigError(f"{origin}: a task spec needs 'kind' (see `rung plugins` for the eval tasks installed)")
    data.setdefault("name", str(data["kind"]))
    return data, base, origin


def load_task(registry: Any, spec: str | Path | Mapping[str, Any], where: str = "task",
              overrides: Mapping[str, Any] | None = None) -> EvalTask:
    """Build the task a spec describes, validated by its kind's options model; `overrides`
    (e.g. `rung eval --limit`) replace the spec's own keys. Errors name the spec's file (or `where`)."""
    from pydantic import ValidationError

    from rung.config import section_model

    data, base, origin = read_spec(spec, where)
    data.update(overrides or {})
    kind = str(data.pop("kind"))
    try:
        model = section_model(registry, "eval_task", kind)
    except RungError as exc:  # an unknown kind (PluginError): which spec names it
        raise ConfigError(f"{origin}: kind: {exc}") from None
    section = {"name": kind, "label": data.pop("name"), **data}
    try:
        options = model.model_validate(section)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ["name" if i == 0 and part == "label" else str(part) for i, part in enumerate(first["loc"])]
        key = ".".join(loc) or "spec"  # (the spec's `name` is the options' `label`)
        raise ConfigError(f"{origin}: {key}: {first['msg']}") from None
    return registry.get("eval_task", kind).load()(options, base_dir=base)


def tasks_evaluator(run: RunContext, specs: Sequence[str | Mapping[str, Any]],
                    evaluate: Evaluator | None = None) -> Evaluator | None:
    """`evaluate` (the trainer's own evaluator, or None) followed by every task in `specs`.

    Built before training starts, so a bad spec stops the run at once with its path
    (`trainer.eval_tasks[i]`). Each evaluation also writes the latest task results to
    `eval.json` in the run folder (atomically; rank 0 only).
    """
    if not specs:
        return evaluate
    registry = getattr(getattr(run, "plugins", None), "registry", None)
    if registry is None:
        from rung.plugins import get_plugins

        registry = get_plugins().registry
    tasks = [load_task(registry, spec, f"trainer.eval_tasks[{i}]") for i, spec in enumerate(specs)]
    backend = run.backend()
    main = int(os.environ.get("RANK", "0")) == 0

    def evaluate_all(model: Any) -> dict[str, float]:
        out: dict[str, float] = dict(evaluate(model) or {}) if evaluate is not None else {}
        results: dict[str, dict[str, float]] = {}
        for task in tasks:
            results[task.name] = {k: float(v) for k, v in task.evaluate(backend, model).items()}
            out.update({f"{task.name}/{k}": v for k, v in results[task.name].items()})
        if main:
            write_json_atomic(Path(run.output_dir) / "eval.json", results)
        return out

    return evaluate_all


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to `path` through a temporary file and a rename: a reader never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)

"""Stage kinds: what a stage of each kind takes, writes, runs and reports.

- a trainer (`pretrain`, `sft`, `lora`, `dpo`, `grpo`, any registered one) takes a run config
  (backend, tokenizer, data, trainer, logging, seed) and writes `<output_dir>/model` (an
  adapter trainer without `merge`: `<output_dir>/adapter`);
- `prepare` takes a run config without a trainer (its `data` a corpus) and writes the token
  shards: `data.shards.dir`, else `<output_dir>/data`;
- `eval` takes backend (the model), tokenizer, `tasks` (task specs) and `limit`, and writes
  `<output_dir>/eval.json`;
- `export` takes `model`, `format` (default safetensors), `options` and `output`, and writes
  `output`, else into `<output_dir>` (the format names the file);
- `serve` takes backend (the model), tokenizer, `host`, `port` and `args`, and writes nothing:
  it prints the `rung serve` command; `rung run FILE --only STAGE` serves;
- `command` takes `run` (argv; `python` is the Python running rung) and `outputs`, which it
  writes (the first is what `{from: it}` reads).

The core reaches the plugins only through their registries: trainers by name (`run_config`),
the `prepare` command (rung-pretrain's), eval task kinds (`rung.evaluation`), export formats
(`rung.exporting`) and the `serve` command (rung-serve's).

Key metrics (the summary table): a stage's `eval.json` task results, and the latest value of
each key metric in its `metrics.jsonl` (validation loss, bits per byte, accuracy, exact match,
reward).
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from rung.errors import ConfigError, RungError
from rung.options import Options

if TYPE_CHECKING:
    from rung.stages.plan import Stage

RUN_KEYS = ("output_dir", "seed", "backend", "tokenizer", "data", "trainer", "logging")

#: Metric names the summary table shows (from eval.json and metrics.jsonl).
KEY_METRIC = re.compile(r"bits_per_byte|_bpb$|accurac|exact_match|^val_loss$|^eval_loss$|^eval_reward$|^reward_mean$")


class StageKind:
    """One kind of stage. Subclasses say what it takes, validate it, run it and read its metrics."""

    name = ""
    keys: tuple[str, ...] = ()  # what a stage of this kind may set
    inherits: tuple[str, ...] = ()  # top-level sections it inherits
    skippable = True  # a finished stage with an unchanged config is skipped
    no_output_hint = ""

    @property
    def title(self) -> str:
        return self.name

    def validate(self, stage: Stage, registry: Any, **where: Any) -> Any:
        raise NotImplementedError

    def output(self, stage: Stage) -> Path | None:
        """What a later stage's `{from: NAME}` reads."""
        return None

    def planned(self, stage: Stage) -> list[Path]:
        """Every path it writes that a later stage may read (counts as present when validating)."""
        return [stage.output] if stage.output is not None else []

    def done(self, stage: Stage) -> bool:
        """Whether what it wrote is still there (a finished stage whose output went reruns)."""
        return all(Path(p).exists() for p in self.planned(stage))

    def run(self, stage: Stage, plugins: Any, *, fresh: bool, serve: bool = False) -> dict[str, Any]:
        """Run it; return what to record beside its time and metrics (e.g. `written`)."""
        raise NotImplementedError

    def metrics(self, stage: Stage) -> dict[str, float]:
        return _folder_metrics(stage.output_dir)


# ---------------------------------------------------------------- validating the non-run kinds


def _validate(model: type[Options], stage: Stage, registry: Any, *, source: str, lines: Mapping[Any, int],
              prefix: tuple, overridden: Sequence[tuple]) -> Any:
    """`stage.data` validated by `model`, errors said as a run config's are (file:line: stages[i].key)."""
    from pydantic import ValidationError

    from rung.config import _check_plugin_names, _format_errors, _Where

    where = _Where(source, lines, set(overridden), prefix)
    _check_plugin_names(stage.data, registry, where)
    try:
        return model.model_validate(stage.data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, stage.data, model, where)) from None


def _with_sections(registry: Any, base: type[Options], **sections: str) -> type[Options]:
    """`base` with plugin sections (`backend="backend"`: the backend union) added as fields."""
    from pydantic import create_model

    from rung.config import _section_union

    fields: dict[str, Any] = {}
    for key, kind in sections.items():
        union = _section_union(registry, kind)
        fields[key] = (union, Field(description=f"the {kind} section")) if key == "backend" else (union | None, None)
    return create_model(base.__name__, __base__=base, **fields)


def _line_of(lines: Mapping[Any, int], source: str, path: tuple) -> str:
    for n in range(len(path), 0, -1):
        if path[:n] in lines:
            return f"{source}:{lines[path[:n]]}"
    return source


def _name(prefix: tuple, *rest: Any) -> str:
    head = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in prefix).lstrip(".")
    return ".".join([head, *map(str, rest)])


# ---------------------------------------------------------------- trainers and prepare


class TrainerKind(StageKind):
    """A registered trainer: the stage is a whole run config, run by `rung.runner.run_config`."""

    keys = inherits = RUN_KEYS

    def __init__(self, name: str) -> None:
        self.name = name

    @property
    def title(self) -> str:
        return f"trainer {self.name}"

    def validate(self, stage: Stage, registry: Any, **where: Any) -> Any:
        from rung.config import make_config

        config = make_config(stage.data, registry=registry, **where)
        self._adapter = getattr(config.trainer, "merge", None) is False  # an adapter trainer, unmerged
        stage.output = self.output(stage)
        stage.planned = self.planned(stage)
        return config

    def output(self, stage: Stage) -> Path | None:
        return stage.output_dir / ("adapter" if getattr(self, "_adapter", False) else "model")

    def run(self, stage: Stage, plugins: Any, *, fresh: bool, serve: bool = False) -> dict[str, Any]:
        from rung.runner import run_config

        if fresh:  # a changed or forced stage starts over: no resuming an older config's checkpoints
            _clear(stage.output_dir, ("checkpoints", "metrics.jsonl", "eval.json"))
        result = run_config(stage.config, plugins)
        return {"steps": result.steps, "final_loss": result.final_loss}


class PrepareKind(StageKind):
    """rung-pretrain's data preparation (`rung prepare`): corpus, cleaning, tokenizer, shards."""

    name = "prepare"
    keys = inherits = tuple(k for k in RUN_KEYS if k != "trainer")

    def validate(self, stage: Stage, registry: Any, **where: Any) -> Any:
        from rung.config import make_config

        if "prepare" not in registry.items["command"]:
            raise ConfigError(f"{where['source']}: {stage.where}: a prepare stage runs `rung prepare`, which no "
                              "installed plugin provides (it is rung-pretrain's)")
        config = make_config(stage.data, registry=registry, **where)
        if config.data is None:
            raise ConfigError(f"{_line_of(where['lines'], where['source'], where['prefix'])}: "
                              f"{_name(where['prefix'])}: a prepare stage needs a 'data' section (a corpus)")
        return config

    def output(self, stage: Stage) -> Path | None:
        data = stage.data.get("data")
        shards = data.get("shards") if isinstance(data, Mapping) else None
        folder = shards.get("dir") if isinstance(shards, Mapping) else None
        return Path(folder) if folder else stage.output_dir / "data"

    def run(self, stage: Stage, plugins: Any, *, fresh: bool, serve: bool = False) -> dict[str, Any]:
        from rung.config import config_to_yaml

        stage.output_dir.mkdir(parents=True, exist_ok=True)
        config = stage.output_dir / "config.yaml"
        config.write_text(config_to_yaml(stage.config), encoding="utf-8")
        args = [str(config)] + ([] if sys.stderr.isatty() else ["--quiet"])
        plugins.registry.get("command", "prepare").load().main(args=args, standalone_mode=False)
        return {}

    def metrics(self, stage: Stage) -> dict[str, float]:
        manifest = Path(stage.output or "") / "manifest.json"
        try:
            data = json.loads(manifest.read_text(encoding="utf-8"))
            splits = data["splits"]
            return {"train_tokens": float(splits["train"]["tokens"]),
                    "validation_tokens": float(splits["validation"]["tokens"])}
        except (OSError, ValueError, KeyError, TypeError):
            return {}


# ---------------------------------------------------------------- eval


class EvalOptions(Options):
    """An eval stage: task specs run on one model, as `rung eval` runs them."""

    output_dir: Path
    seed: int = 0
    tasks: list[str | dict[str, Any]] = Field(min_length=1, description="task spec files or inline specs")
    limit: int | None = Field(None, ge=1, description="only the first N items of each task that has a limit")


class EvalKind(StageKind):
    """Eval tasks (`rung.evaluation`, rung-eval's kinds) on the stage's backend: eval.json."""

    name = "eval"
    keys = ("output_dir", "seed", "backend", "tokenizer", "tasks", "limit")
    inherits = ("seed", "backend", "tokenizer")

    def validate(self, stage: Stage, registry: Any, **where: Any) -> Any:
        model = _with_sections(registry, EvalOptions, backend="backend", tokenizer="tokenizer")
        config = _validate(model, stage, registry, **where)
        self.tasks(stage, config, registry, where)  # a bad spec stops the plan before anything runs
        return config

    def tasks(self, stage: Stage, config: Any, registry: Any, where: Mapping[str, Any] | None = None) -> list[Any]:
        """The stage's tasks, built; when validating (`where`), a task whose data an earlier
        stage will write has its options checked only (a task reads its data as it is built)."""
        from rung.config import section_model
        from rung.evaluation import load_task, read_spec

        out = []
        for index, spec in enumerate(config.tasks):
            at = _name(where["prefix"], "tasks", index) if where else f"{stage.where}.tasks[{index}]"
            named = f"{_line_of(where['lines'], where['source'], (*where['prefix'], 'tasks', index))}: {at}" \
                if where else at
            overrides = {}
            if config.limit is not None:
                kind = str(read_spec(spec, named)[0]["kind"])
                if kind in registry.names("eval_task") and \
                        "limit" in section_model(registry, "eval_task", kind).model_fields:
                    overrides["limit"] = config.limit
            if where is not None and _reads_planned(*read_spec(spec, named)[:2]):
                _check_task_options(registry, spec, named, overrides)
                continue
            out.append(load_task(registry, spec, named, overrides))
        return out

    def output(self, stage: Stage) -> Path | None:
        return stage.output_dir / "eval.json"

    def run(self, stage: Stage, plugins: Any, *, fresh: bool, serve: bool = False) -> dict[str, Any]:
        import time

        from rung.console import get_console
        from rung.evaluation import write_json_atomic
        from rung.runner import build

        config, console = stage.config, get_console()
        tasks = self.tasks(stage, config, plugins.registry)
        extra = {}
        if config.tokenizer is not None:
            extra["tokenizer"] = build(plugins, "tokenizer", config.tokenizer)
        backend = build(plugins, "backend", config.backend, **extra)
        results: dict[str, dict[str, float]] = {}
        try:
            for task in tasks:
                began = time.perf_counter()
                results[task.name] = {k: float(v) for k, v in task.evaluate(backend).items()}
                shown = ", ".join(f"{k} {v:.4g}" for k, v in results[task.name].items())
                console.print(f"{task.name}: {shown} ({time.perf_counter() - began:.1f} s)",
                              highlight=False, markup=False)
        finally:
            close = getattr(backend, "close", None)
            if callable(close):
                close()
        write_json_atomic(stage.output_dir / "eval.json", results)
        return {}


def string_leaves(value: Any) -> Iterator[str]:
    """Every non-empty string inside nested mappings and lists (a section's possible paths)."""
    if isinstance(value, Mapping):
        for v in value.values():
            yield from string_leaves(v)
    elif isinstance(value, list):
        for v in value:
            yield from string_leaves(v)
    elif isinstance(value, str) and value:
        yield value


def _reads_planned(spec: Mapping[str, Any], base: Path) -> bool:
    """Whether a path in a task spec is not there yet but an earlier stage will write it."""
    from rung.paths import path_problem

    for text in string_leaves(spec):
        full = Path(text).expanduser()
        full = full if full.is_absolute() else base / full
        if not full.exists() and path_problem(str(full), globs=True) is None:
            return True
    return False


def _check_task_options(registry: Any, spec: Any, named: str, overrides: Mapping[str, Any]) -> None:
    """A task spec's options validated by its kind's model, as `rung.evaluation.load_task` does,
    without building the task (which reads its data)."""
    from pydantic import ValidationError

    from rung.config import section_model
    from rung.evaluation import read_spec

    data, _, origin = read_spec(spec, named)
    data.update(overrides)
    kind = str(data.pop("kind"))
    try:
        model = section_model(registry, "eval_task", kind)
    except RungError as exc:
        raise ConfigError(f"{origin}: kind: {exc}") from None
    try:
        model.model_validate({"name": kind, "label": data.pop("name"), **data})
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join("name" if i == 0 and p == "label" else str(p) for i, p in enumerate(first["loc"])) or "spec"
        raise ConfigError(f"{origin}: {key}: {first['msg']}") from None


# ---------------------------------------------------------------- export


class ExportOptions(Options):
    """An export stage: `rung export MODEL --format FORMAT key=value ...`."""

    output_dir: Path
    model: str = Field(description="the model or adapter folder to export: a path or {from: STAGE}")
    format: str = Field("safetensors", description="an export format (`rung plugins`: safetensors, gguf, ...)")
    options: dict[str, Any] = Field(default_factory=dict, description="the format's own options, e.g. outtype")
    output: str | None = Field(None, description="where to write; null: the stage's folder (the format names it)")


class ExportKind(StageKind):
    """An export format (`rung.exporting`): the model in another form, e.g. one GGUF file."""

    name = "export"
    keys = ("output_dir", "model", "format", "options", "output")

    def validate(self, stage: Stage, registry: Any, **where: Any) -> Any:
        from rung.paths import path_problem
        from rung.runner import validate_section

        config = _validate(ExportOptions, stage, registry, **where)
        lines, source, prefix = where["lines"], where["source"], where["prefix"]
        problem = path_problem(config.model, "folder", what="a model or adapter folder")
        if problem:
            raise ConfigError(f"{_line_of(lines, source, (*prefix, 'model'))}: {_name(prefix, 'model')}: {problem}")
        at = f"{_line_of(lines, source, (*prefix, 'format'))}: {_name(prefix, 'format')}"
        try:
            registry.get("export_format", config.format)
        except RungError as exc:
            raise ConfigError(f"{at}: {exc}") from None
        named = f"{_line_of(lines, source, (*prefix, 'options'))}: {_name(prefix, 'options')}"
        validate_section(registry, "export_format", {**config.options, "name": config.format}, named)
        return config

    def output(self, stage: Stage) -> Path | None:
        written = stage.data.get("output")
        return Path(written) if written else stage.output_dir

    def run(self, stage: Stage, plugins: Any, *, fresh: bool, serve: bool = False) -> dict[str, Any]:
        from rung.console import get_console
        from rung.exporting import export

        config = stage.config
        target = Path(config.output) if config.output else stage.output_dir
        if not config.output:
            target.mkdir(parents=True, exist_ok=True)
        written = export(config.format, config.model, target, config.options, registry=plugins.registry)
        get_console().print(f"exported {config.model} as {config.format}: {written}", highlight=False, markup=False)
        return {"written": str(written)}

    def metrics(self, stage: Stage) -> dict[str, float]:
        return {}


# ---------------------------------------------------------------- serve


class ServeOptions(Options):
    """A serve stage: the `rung serve` command of its model, printed (run with `--only`)."""

    output_dir: Path
    seed: int = 0
    host: str | None = Field(None, description="address to bind (rung serve's default: 127.0.0.1)")
    port: int | None = Field(None, ge=0, le=65535, description="port (rung serve's default: 8000)")
    args: list[str] = Field(default_factory=list, description="more `rung serve` options, e.g. [--max-slots, '8']")


class ServeKind(StageKind):
    """`rung serve` on the stage's backend: a ladder prints the command; `--only STAGE` serves."""

    name = "serve"
    keys = ("output_dir", "seed", "backend", "tokenizer", "host", "port", "args")
    inherits = ("seed", "backend", "tokenizer")
    skippable = False  # printing the command costs nothing, and it is what the end of a ladder shows
    no_output_hint = " (it serves a model: give a later stage the model's own stage)"

    def validate(self, stage: Stage, registry: Any, **where: Any) -> Any:
        model = _with_sections(registry, ServeOptions, backend="backend", tokenizer="tokenizer")
        return _validate(model, stage, registry, **where)

    def argv(self, stage: Stage) -> list[str]:
        """`rung serve`'s arguments for this stage: -b, -m, -o per backend option the stage sets."""
        from pydantic import SecretStr

        config = stage.config
        backend = dict(stage.data.get("backend") or {})
        args = ["-b", str(backend.pop("name"))]
        if "model" in backend:
            args += ["-m", str(backend.pop("model"))]
        for key, value in _flat(backend):
            if isinstance(getattr(config.backend, key.split(".")[0], None), SecretStr):
                continue  # a key never goes on a command line: rung serve finds it as the backend does
            args += ["-o", f"{key}={_yaml_scalar(value)}"]
        tokenizer = stage.data.get("tokenizer")
        if isinstance(tokenizer, Mapping) and "name" in tokenizer:
            args += ["--tokenizer", str(tokenizer["name"])]
        for flag in ("host", "port"):
            if getattr(config, flag) is not None:
                args += [f"--{flag}", str(getattr(config, flag))]
        return args + list(config.args)

    def command(self, stage: Stage) -> str:
        import shlex

        return shlex.join(["rung", "serve", *self.argv(stage)])

    def done(self, stage: Stage) -> bool:
        return False

    def run(self, stage: Stage, plugins: Any, *, fresh: bool, serve: bool = False) -> dict[str, Any]:
        from rung.console import get_console

        command = self.command(stage)
        if serve:
            plugins.registry.get("command", "serve").load().main(args=self.argv(stage), standalone_mode=False)
        else:
            get_console().print(f"serve it: {command}", highlight=False, markup=False)
        return {"command": command, "served": serve}

    def metrics(self, stage: Stage) -> dict[str, float]:
        return {}


def _flat(section: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in section.items():
        if isinstance(value, Mapping):
            out += _flat(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", value))
    return out


def _yaml_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return json.dumps(list(value))
    return str(value)


# ---------------------------------------------------------------- command


class CommandOptions(Options):
    """A command stage: a program that writes files later stages read (e.g. synthetic data)."""

    output_dir: Path
    run: list[str] = Field(min_length=1, description="the program and its arguments; 'python' is this Python")
    outputs: list[str] = Field(default_factory=list, description="the paths it writes ({from: it}: the first)")


class CommandKind(StageKind):
    """Any program, run once: its `outputs` count as present for the stages after it."""

    name = "command"
    keys = ("output_dir", "run", "outputs")
    no_output_hint = " (give it `outputs:`)"

    def validate(self, stage: Stage, registry: Any, **where: Any) -> Any:
        stage.data["run"] = [str(a) for a in stage.data.get("run") or []] if isinstance(stage.data.get("run"), list) \
            else stage.data.get("run")
        return _validate(CommandOptions, stage, registry, **where)

    def output(self, stage: Stage) -> Path | None:
        outputs = stage.data.get("outputs") or []
        return Path(outputs[0]) if isinstance(outputs, list) and outputs else None

    def planned(self, stage: Stage) -> list[Path]:
        outputs = stage.data.get("outputs") or []
        return [Path(p) for p in outputs] if isinstance(outputs, list) else []

    def run(self, stage: Stage, plugins: Any, *, fresh: bool, serve: bool = False) -> dict[str, Any]:
        import shlex
        import subprocess

        argv = [sys.executable if i == 0 and a == "python" else a for i, a in enumerate(stage.config.run)]
        try:
            code = subprocess.run(argv, check=False).returncode
        except OSError as exc:
            raise RungError(f"{stage.where}: cannot run {shlex.join(stage.config.run)}: {exc.strerror or exc}") \
                from None
        if code != 0:
            raise RungError(f"{stage.where}: {shlex.join(stage.config.run)} exited with status {code}")
        missing = [p for p in stage.config.outputs if not Path(p).exists()]
        if missing:
            raise RungError(f"{stage.where}: {shlex.join(stage.config.run)} did not write {', '.join(missing)}")
        return {}

    def metrics(self, stage: Stage) -> dict[str, float]:
        return {}


KINDS: dict[str, StageKind] = {kind.name: kind for kind in (PrepareKind(), EvalKind(), ExportKind(), ServeKind(),
                                                            CommandKind())}


# ---------------------------------------------------------------- reading what a stage wrote


def _folder_metrics(folder: Path) -> dict[str, float]:
    """Key metrics of a run folder: its eval.json task results and the latest key values in metrics.jsonl."""
    out: dict[str, float] = {}
    metrics = folder / "metrics.jsonl"
    if metrics.is_file():
        from rung.jsonl import latest_history, read_jsonl

        records = latest_history(value for value, _ in read_jsonl(metrics, skip_partial_last=True,
                                                                   skip_invalid=True))
        for record in records:
            for key, value in record.items():
                if key != "step" and KEY_METRIC.search(key) and isinstance(value, (int, float)):
                    out[key] = float(value)
    results = folder / "eval.json"
    try:
        tasks = json.loads(results.read_text(encoding="utf-8")) if results.is_file() else {}
    except (OSError, ValueError):
        tasks = {}
    for task, values in tasks.items() if isinstance(tasks, dict) else ():
        for key, value in (values.items() if isinstance(values, dict) else ()):
            if KEY_METRIC.search(key) and isinstance(value, (int, float)):
                out[f"{task}/{key}"] = float(value)
    return out


def _clear(folder: Path, names: Sequence[str]) -> None:
    for name in names:
        path = folder / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()

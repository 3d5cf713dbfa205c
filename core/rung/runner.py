"""A run: its config, output folder, metric sinks, and the objects built from its sections.

`Run` is the core's implementation of `rung.context.RunContext`, the only name trainers and
engines depend on. A trainer asks it for what it needs, when it needs it: a trainer that
learns a tokenizer first builds the backend only after, with that tokenizer.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rung.config import config_to_yaml
from rung.errors import ConfigError
from rung.interfaces import Backend, DataSource, MetricSink, Objective, Tokenizer
from rung.plugins import Plugins, get_plugins
from rung.records import TrainResult


def build(plugins: Plugins, kind: str, options: Any, **resources: Any) -> Any:
    """Import the implementation registered for `options.name` and build it from `options`."""
    descriptor = plugins.registry.get(kind, options.name)
    return descriptor.load()(options, **resources)


class Run:
    """Everything one `rung run` holds; handed to the trainer as its `RunContext`."""

    def __init__(self, config: Any, plugins: Plugins | None = None) -> None:
        self.config = config
        self.plugins = plugins or get_plugins()
        self.output_dir = Path(config.output_dir)
        self._tokenizer: Tokenizer | None = None
        self._backend: Backend | None = None
        self._sinks: list[MetricSink] | None = None

    @property
    def seed(self) -> int:
        return int(getattr(self.config, "seed", 0) or 0)

    # -- objects built from the config, once each

    def tokenizer(self) -> Tokenizer | None:
        """The configured tokenizer, or None if the config has no tokenizer section."""
        if self._tokenizer is None and self.config.tokenizer is not None:
            self._tokenizer = build(self.plugins, "tokenizer", self.config.tokenizer)
        return self._tokenizer

    def use_tokenizer(self, tokenizer: Tokenizer) -> None:
        """Replace the tokenizer (a trainer that learnt one hands it to the backend this way)."""
        self._tokenizer = tokenizer

    def backend(self) -> Backend:
        """The configured backend, built with the run's tokenizer when there is one."""
        if self._backend is None:
            tokenizer = self.tokenizer()
            extra = {"tokenizer": tokenizer} if tokenizer is not None else {}
            self._backend = build(self.plugins, "backend", self.config.backend, **extra)
            self.plugins.hook.rung_after_model_load(run=self, backend=self._backend)
        return self._backend

    def data(self) -> DataSource:
        """The configured data source; a clear error if the config has none."""
        if self.config.data is None:
            raise ConfigError(f"trainer '{self.config.trainer.name}' needs a 'data' section")
        return build(self.plugins, "data_source", self.config.data)

    def build(self, kind: str, section: Mapping[str, Any] | Any, where: str) -> Any:
        """Build a registered `kind` from a config section, validated by its options model."""
        if isinstance(section, Mapping):
            section = validate_section(self.plugins.registry, kind, section, where)
        return build(self.plugins, kind, section)

    def objective(self, name: str) -> Objective:
        """The backend framework's implementation of objective `name`."""
        from rung import objectives

        framework = getattr(self.backend(), "framework", None)
        return objectives.load(self.plugins.registry, name, framework)

    # -- what engines report

    def log(self, step: int, metrics: Mapping[str, float | str]) -> None:
        """Send one step's metrics to every sink and to the `rung_on_step` hook."""
        for sink in self.sinks():
            sink.log(step, metrics)
        self.plugins.hook.rung_on_step(run=self, step=step, metrics=dict(metrics))

    def resumed(self, step: int) -> None:
        """Tell the sinks that can hear it (`resumed(step)`) that the run resumed from `step`:
        what an earlier attempt logged after it is superseded (the JSONL sink rewrites its file)."""
        for sink in self.sinks():
            if callable(getattr(sink, "resumed", None)):
                sink.resumed(step)

    def checkpointed(self, step: int, path: str | Path) -> None:
        """Tell plugins a checkpoint is complete."""
        self.plugins.hook.rung_on_checkpoint(run=self, step=step, path=str(path))

    def sinks(self) -> list[MetricSink]:
        if self._sinks is None:
            self._sinks = [
                build(self.plugins, "metric_sink", sink, run_dir=self.output_dir)
                for sink in self.config.logging.sinks
            ]
        return self._sinks

    def close(self) -> None:
        for sink in self._sinks or []:
            sink.close()
        self._sinks = None


def validate_section(registry: Any, kind: str, data: Mapping[str, Any], where: str) -> Any:
    """A config section (mapping with `name`) validated by that thing's options model."""
    from pydantic import ValidationError

    from rung.config import section_model

    if "name" not in data:
        raise ConfigError(f"{where}: needs a 'name'")
    model = section_model(registry, kind, data["name"])
    try:
        return model.model_validate(dict(data))
    except ValidationError as exc:
        first = exc.errors()[0]
        path = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"{where}.{path}: {first['msg']}") from None


def run_config(config: Any, plugins: Plugins | None = None) -> TrainResult:
    """Run a validated config: build the trainer and let it train."""
    if config.trainer is None:
        raise ConfigError("the config has no 'trainer' section: nothing to run")
    import contextlib
    import os

    from rung.folder_lock import owned

    random.seed(config.seed)
    the_run = Run(config, plugins)
    # Rank 0 owns the folder for every rank of a distributed run (torchrun sets RANK).
    main = os.environ.get("RANK", "0") == "0"
    the_run.output_dir.mkdir(parents=True, exist_ok=True)
    with owned(the_run.output_dir) if main else contextlib.nullcontext():
        if main:
            (the_run.output_dir / "config.yaml").write_text(config_to_yaml(config), encoding="utf-8")
        trainer = build(the_run.plugins, "trainer", config.trainer)
        try:
            result = trainer.train(the_run)
            the_run.plugins.hook.rung_on_train_end(run=the_run, result=result)
        finally:
            the_run.close()
    return result

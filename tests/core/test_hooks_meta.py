"""Meta-tests: every hook is documented, and real runs call every hook, so the contract cannot rot.

A recording plugin (registered on the plugin manager like an installed one) implements every
hook; a tiny real training runs through `rung.runner.run_config` on the torch and the jax
backend; each hook must have fired, with arguments that say what happened.
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import numpy as np
import pytest

import rung
from rung import hookspecs
from rung.hookspecs import REGISTRATION_HOOKS
from rung.training import TrainingOptions

ROOT = Path(__file__).resolve().parents[2]
HOOKS = [name for name, fn in vars(hookspecs).items() if name.startswith("rung_") and inspect.isfunction(fn)]
LIFECYCLE = ["rung_after_model_load", "rung_on_step", "rung_on_checkpoint", "rung_on_train_end"]


def test_there_are_hooks():
    assert len(HOOKS) >= 11
    # every hook is a registration hook or one of the lifecycle hooks the runs below check
    assert sorted(HOOKS) == sorted([*REGISTRATION_HOOKS.values(), *LIFECYCLE])


@pytest.mark.parametrize("name", HOOKS)
def test_hook_has_a_one_line_docstring(name):
    doc = inspect.getdoc(getattr(hookspecs, name)) or ""
    assert doc and "\n" not in doc.strip(), f"{name} needs a one-line docstring"


@pytest.mark.parametrize("name", HOOKS)
def test_hook_is_documented_for_plugin_authors(name):
    docs = (ROOT / "CONTRIBUTING.md").read_text()
    short = name.replace("rung_register", "")
    assert name in docs or f"`{short}`" in docs, f"{name} is not in CONTRIBUTING.md"


# ---------------------------------------------------------------------- real runs call every hook


class ProbeOptions(TrainingOptions):
    """The probe trainer's options: the shared training options, nothing more."""


class Windows:
    """An endless, seeded, resumable stream of random token rows."""

    def __init__(self, vocab: int, batch: int, seq: int = 16) -> None:
        self.vocab, self.batch, self.seq, self.index = vocab, batch, seq, 0

    def __next__(self):
        rng = np.random.default_rng([7, self.index])
        self.index += 1
        return {"input_ids": rng.integers(0, self.vocab, size=(self.batch, self.seq)).astype(np.int64)}

    def state_dict(self):
        return {"index": self.index}

    def load_state_dict(self, state):
        self.index = int(state["index"])


class ProbeTrainer:
    """The least a trainer does: the framework's next-token objective through the backend's engine."""

    def __init__(self, options: ProbeOptions) -> None:
        self.options = options

    def train(self, run):
        backend = run.backend()
        stream = Windows(backend.tokenizer.vocab_size, self.options.batch_size)
        return backend.engine().fit(run.objective("next_token_loss"), stream, self.options, run)


class Recorder:
    """A plugin implementing every hook; it keeps each call's arguments."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []

    def _record(self, name: str, **arguments) -> None:
        self.calls.append((name, arguments))

    @rung.hookimpl
    def rung_register_trainers(self, register):
        self._record("rung_register_trainers", register=register)
        register("hook-probe", impl=f"{__name__}:ProbeTrainer", options=f"{__name__}:ProbeOptions",
                 objectives=("next_token_loss",), summary="trains a few steps to see every hook fire")

    @rung.hookimpl
    def rung_register_backends(self, register):
        self._record("rung_register_backends", register=register)

    @rung.hookimpl
    def rung_register_objectives(self, register):
        self._record("rung_register_objectives", register=register)

    @rung.hookimpl
    def rung_register_tokenizers(self, register):
        self._record("rung_register_tokenizers", register=register)

    @rung.hookimpl
    def rung_register_data_sources(self, register):
        self._record("rung_register_data_sources", register=register)

    @rung.hookimpl
    def rung_register_metric_sinks(self, register):
        self._record("rung_register_metric_sinks", register=register)

    @rung.hookimpl
    def rung_register_reward_functions(self, register):
        self._record("rung_register_reward_functions", register=register)

    @rung.hookimpl
    def rung_register_eval_tasks(self, register):
        self._record("rung_register_eval_tasks", register=register)

    @rung.hookimpl
    def rung_register_export_formats(self, register):
        self._record("rung_register_export_formats", register=register)

    @rung.hookimpl
    def rung_register_commands(self, register):
        self._record("rung_register_commands", register=register)

    @rung.hookimpl
    def rung_after_model_load(self, run, backend):
        self._record("rung_after_model_load", run=run, backend=backend)

    @rung.hookimpl
    def rung_on_step(self, run, step, metrics):
        self._record("rung_on_step", run=run, step=step, metrics=metrics)

    @rung.hookimpl
    def rung_on_checkpoint(self, run, step, path):
        self._record("rung_on_checkpoint", run=run, step=step, path=path,
                     complete=Path(path).is_dir() and any(Path(path).iterdir()))

    @rung.hookimpl
    def rung_on_train_end(self, run, result):
        self._record("rung_on_train_end", run=run, result=result)


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_a_real_training_run_calls_every_hook(framework, tmp_path):
    pytest.importorskip(framework)
    pytest.importorskip(f"rung_{framework}")
    from rung.config import make_config
    from rung.plugins import load_plugins
    from rung.runner import run_config

    recorder = Recorder()
    plugins = load_plugins(extra=[("hook-recorder", recorder)])
    assert not [w for w in plugins.warnings if "hook-recorder" in w], plugins.warnings
    registered = [name for name, _ in recorder.calls]
    assert sorted(registered) == sorted(REGISTRATION_HOOKS.values())  # each once, at load
    assert all(callable(arguments["register"]) for _, arguments in recorder.calls)
    recorder.calls.clear()

    config = make_config({
        "backend": {"name": framework, "model": "test", "device": "cpu", "precision": "fp32"},
        "tokenizer": {"name": "byte"},
        "trainer": {"name": "hook-probe", "steps": 3, "batch_size": 2, "log_every": 1, "save_every": 2,
                    "warmup_steps": 1, "resume": "never"},
        "logging": {"sinks": [{"name": "jsonl"}]},
        "output_dir": str(tmp_path / "run"),
    }, registry=plugins.registry)
    result = run_config(config, plugins)

    names = [name for name, _ in recorder.calls]
    events = [(name.removeprefix("rung_"), arguments.get("step")) for name, arguments in recorder.calls]
    assert events == [("after_model_load", None), ("on_step", 1), ("on_step", 2), ("on_checkpoint", 2),
                      ("on_step", 3), ("on_checkpoint", 3), ("on_train_end", None)]
    assert sorted(set(names)) == sorted(LIFECYCLE)
    runs = {id(arguments["run"]) for _, arguments in recorder.calls}
    assert len(runs) == 1  # one run context, handed to every hook
    by_name: dict[str, list[dict]] = {}
    for name, arguments in recorder.calls:
        by_name.setdefault(name, []).append(arguments)

    (loaded,) = by_name["rung_after_model_load"]
    assert loaded["backend"].framework == framework and loaded["run"].output_dir == tmp_path / "run"
    steps = by_name["rung_on_step"]
    assert [c["step"] for c in steps] == [1, 2, 3]
    assert all(math.isfinite(c["metrics"]["loss"]) and c["metrics"]["lr"] > 0 for c in steps)
    checkpoints = by_name["rung_on_checkpoint"]
    assert all(c["complete"] for c in checkpoints)  # reported once written, not before
    (ended,) = by_name["rung_on_train_end"]
    assert ended["result"] is result
    assert result.steps == 3 and result.checkpoint == checkpoints[-1]["path"]
    assert result.final_loss == steps[-1]["metrics"]["loss"]

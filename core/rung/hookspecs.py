"""Every hook a rung plugin can implement.

A plugin is a module listed under the entry-point group ``rung``; it implements any of these
with ``@rung.hookimpl``. Registration hooks receive a ``register`` callback and must stay
light: they name where things live (``"package.module:Name"``) and import nothing heavy.
``register(name, impl=..., options=..., summary=...)`` is the same for every kind; backends
and objectives also give ``framework=``, and trainers ``objectives=`` (the names they ask for).

Lifecycle hooks are called by the engines while a run trains.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import pluggy

if TYPE_CHECKING:
    from rung.records import TrainResult
    from rung.context import RunContext

hookspec = pluggy.HookspecMarker("rung")
hookimpl = pluggy.HookimplMarker("rung")

Register = Callable[..., None]


@hookspec
def rung_register_backends(register: Register) -> None:
    """Register backends: models that answer generation requests (and, if compute, train)."""


@hookspec
def rung_register_trainers(register: Register) -> None:
    """Register trainers: learning objectives such as pretrain, sft, lora, dpo."""


@hookspec
def rung_register_objectives(register: Register) -> None:
    """Register one framework's objectives by name (see ``rung.objectives``), with ``framework=``."""


@hookspec
def rung_register_tokenizers(register: Register) -> None:
    """Register tokenizers: text to token ids and back, some trainable on a corpus."""


@hookspec
def rung_register_data_sources(register: Register) -> None:
    """Register data sources: where documents, chat examples or preference pairs come from."""


@hookspec
def rung_register_metric_sinks(register: Register) -> None:
    """Register metric sinks: where training metrics are written (console, JSONL, W&B)."""


@hookspec
def rung_register_reward_functions(register: Register) -> None:
    """Register reward and evaluation functions: score a completion against a reference."""


@hookspec
def rung_register_eval_tasks(register: Register) -> None:
    """Register evaluation task kinds (``rung.evaluation.EvalTask``): perplexity, multiple choice, ..."""


@hookspec
def rung_register_export_formats(register: Register) -> None:
    """Register export formats for ``rung export --format`` (``rung.exporting.Exporter``): gguf, ..."""


@hookspec
def rung_register_commands(register: Register) -> None:
    """Register CLI commands: ``impl`` names a click command, ``summary`` is its help line."""


@hookspec
def rung_after_model_load(run: RunContext, backend: Any) -> None:
    """Called once the run's backend has built or loaded its model, before training."""


@hookspec
def rung_on_step(run: RunContext, step: int, metrics: dict[str, float]) -> None:
    """Called after every logged optimizer step with that step's metrics."""


@hookspec
def rung_on_checkpoint(run: RunContext, step: int, path: str) -> None:
    """Called after a checkpoint has been written completely to ``path``."""


@hookspec
def rung_on_train_end(run: RunContext, result: TrainResult) -> None:
    """Called once when training finishes, with what it produced."""


# The registration hooks and the kind of thing each registers, in the order `rung plugins`
# shows them.
REGISTRATION_HOOKS: dict[str, str] = {
    "backend": "rung_register_backends",
    "trainer": "rung_register_trainers",
    "objective": "rung_register_objectives",
    "tokenizer": "rung_register_tokenizers",
    "data_source": "rung_register_data_sources",
    "metric_sink": "rung_register_metric_sinks",
    "reward_function": "rung_register_reward_functions",
    "eval_task": "rung_register_eval_tasks",
    "export_format": "rung_register_export_formats",
    "command": "rung_register_commands",
}

"""The run context: what engines and trainers may read and call while a run trains.

The contracts (`interfaces.py`, `hookspecs.py`) name this Protocol, never the runner that
implements it (`rung.runner.Run`), so a plugin written against them depends on nothing but
these few names. A test or another driver may hand an engine any object with them.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from rung.interfaces import Backend, DataSource, Objective, Tokenizer


@runtime_checkable
class RunContext(Protocol):
    """One training run as its trainer and engine see it.

    Engines read `output_dir` and `seed` and call `log` and `checkpointed` (rank 0 only);
    trainers also build the run's pieces (`tokenizer`, `backend`, `data`, `build`) and ask
    for the backend framework's objectives by name (`objective`).
    """

    config: Any  # the validated RunConfig (sections: backend, tokenizer, data, trainer, ...)
    output_dir: Path  # the folder this run owns: checkpoints, saved model, metrics

    @property
    def seed(self) -> int:
        """The run's seed (config `seed`)."""

    def tokenizer(self) -> Tokenizer | None:
        """The configured tokenizer, or None if the config has no tokenizer section."""

    def use_tokenizer(self, tokenizer: Tokenizer) -> None:
        """Replace the tokenizer (one the trainer learnt), before the backend is built."""

    def backend(self) -> Backend:
        """The configured backend, built on first call (with the run's tokenizer)."""

    def data(self) -> DataSource:
        """The configured data source; a clear error if the config has none."""

    def build(self, kind: str, section: Mapping[str, Any] | Any, where: str) -> Any:
        """Build a registered thing (`kind`: data_source, reward_function, ...) from a config
        section (a mapping with `name`, validated by that thing's options; errors name `where`)."""

    def objective(self, name: str) -> Objective:
        """The objective `name` (see `rung.objectives`) for the run's backend framework."""

    def log(self, step: int, metrics: Mapping[str, float | str]) -> None:
        """Send one step's metrics to every sink and to the `rung_on_step` hook."""

    def checkpointed(self, step: int, path: str | Path) -> None:
        """Tell plugins (`rung_on_checkpoint`) that a checkpoint at `path` is complete."""

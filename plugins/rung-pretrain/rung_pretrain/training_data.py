"""The data a pretraining run trains on: prepared once across ranks, cut with the model's
tokenizer, and streamed as a batch stream that knows its optimizer step."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rung.errors import ConfigError, RungError


def prepare_data(run: Any) -> Any:
    """Prepare the shards; under torchrun rank 0 does it while the other ranks wait, then reuse it."""
    if getattr(run.config, "data", None) is None:
        raise ConfigError("trainer 'pretrain' needs a 'data' section (name: corpus, sources: [...])")
    from rung_pretrain.pipeline import prepare

    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return prepare(run)
    launch = os.environ.get("TORCHELASTIC_RUN_ID") or os.environ.get("MASTER_PORT", "")
    marker = Path(run.output_dir) / ".prepared"
    if rank == 0:
        try:
            data = prepare(run)
        except BaseException:
            _write(marker, f"{launch} failed")
            raise
        _write(marker, f"{launch} ok")
        return data
    while True:  # wait for rank 0 (its preparation can take minutes)
        state = marker.read_text(encoding="utf-8") if marker.is_file() else ""
        if state == f"{launch} ok":
            return prepare(run, progress=False)
        if state == f"{launch} failed":
            raise RungError("rank 0 could not prepare the data (see its error)")
        time.sleep(0.5)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def use_checkpoint_tokenizer(run: Any) -> Any:
    """Continue pretraining a checkpoint: its tokenizer is the one the data must be cut with.

    Returns that tokenizer (also handed to the run), or None when the model is a preset."""
    model = getattr(run.config.backend, "model", None)
    if not isinstance(model, str) or not Path(model).is_dir():
        return None
    folder = Path(model)
    if not (folder / "tokenizer.json").is_file():
        if run.config.tokenizer is None:
            raise ConfigError(
                f"backend.model: {folder} holds no tokenizer.json; add a 'tokenizer' section "
                f"(the one the checkpoint was trained with)"
            )
        return None
    if run.config.tokenizer is not None and getattr(run.config.tokenizer, "path", None):
        return None  # the config names a tokenizer file itself: trust it
    from rung_tokenizers.tokenizer import load_tokenizer

    if run.config.tokenizer is not None:
        from rung.console import get_console

        get_console().print(
            f"continuing {folder}: the data is tokenized with its tokenizer.json (the tokenizer section is not used)",
            highlight=False, markup=False,
        )
    tokenizer = load_tokenizer(folder)
    run.use_tokenizer(tokenizer)
    return tokenizer


_PROBE = "def main(argv=None):\n    \"\"\"Entry point.\"\"\"\n    return 0  # done, café\n"


def check_same_tokenizer(expected: Any, data: Any) -> None:
    """Shards reused from an earlier preparation must have been cut with the model's tokenizer."""
    if expected.vocab_size != data.tokenizer.vocab_size or expected.encode(_PROBE) != data.tokenizer.encode(_PROBE):
        raise ConfigError(
            f"the token shards in {data.dir} were made with another tokenizer than the model's "
            f"(backend.model); point data.shards.dir elsewhere or run `rung prepare CONFIG --force`"
        )


class StepCounter:
    """A `BatchStream` around the reader's that knows the optimizer step (saved with it)."""

    def __init__(self, inner: Any, micro_per_step: int) -> None:
        self.inner = inner
        self.micro_per_step = max(1, int(micro_per_step))
        self.pulled = 0

    def __iter__(self) -> StepCounter:
        return self

    def __next__(self) -> Mapping[str, Any]:
        batch = next(self.inner)
        self.pulled += 1
        return batch

    @property
    def step(self) -> int:
        return self.pulled // self.micro_per_step

    def state_dict(self) -> dict[str, Any]:
        return {"reader": self.inner.state_dict(), "micro_batches": self.pulled}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if "reader" in state and "micro_batches" in state:
            self.inner.load_state_dict(state["reader"])
            self.pulled = int(state["micro_batches"])
        else:  # a checkpoint of the bare reader
            self.inner.load_state_dict(state)

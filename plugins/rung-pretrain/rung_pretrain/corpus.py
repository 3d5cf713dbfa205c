"""The `corpus` data source: several sources, cleaned, tokenized into shards by `prepare`."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rung.records import Document


def build_sources(options: Any, ignore: tuple[str | Path, ...] = (), run: Any = None) -> list[Any]:
    """The corpus's sources, built by the core (through `run`, a `RunContext`, when there is
    one); folders in `ignore` (the run's outputs) are never read."""
    if run is not None:
        sources = [run.build("data_source", source, where=f"data.sources.{index}")
                   for index, source in enumerate(options.sources)]
    else:
        from rung.plugins import get_plugins
        from rung.runner import build

        plugins = get_plugins()
        sources = [build(plugins, "data_source", source) for source in options.sources]
    for source in sources:
        if hasattr(source, "ignore_dirs"):
            source.ignore_dirs = tuple(os.path.abspath(str(p)) for p in ignore)
    return sources


class Corpus:
    """A `rung.interfaces.DataSource` over the configured sources.

    `read()` yields the raw documents of every source in order (no cleaning); the trainer
    uses `rung_pretrain.prepare(run)` for the cleaned, tokenized shards.
    """

    def __init__(self, options: Any, **_: Any) -> None:
        self.options = options

    def sources(self) -> list[Any]:
        return build_sources(self.options)

    def read(self) -> Iterator[Document]:
        for source in self.sources():
            yield from source.read()

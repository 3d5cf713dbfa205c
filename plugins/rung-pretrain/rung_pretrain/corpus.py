"""The `corpus` data source: several sources, cleaned, tokenized into shards by `prepare`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from rung.records import Document


class Corpus:
    """A `rung.interfaces.DataSource` over the configured sources.

    `read()` yields the raw documents of every source in order (no cleaning); the trainer
    uses `rung_pretrain.prepare(run)` for the cleaned, tokenized shards.
    """

    def __init__(self, options: Any, **_: Any) -> None:
        self.options = options

    def sources(self) -> list[Any]:
        from rung_pretrain.pipeline import build_sources

        return build_sources(self.options)

    def read(self) -> Iterator[Document]:
        for source in self.sources():
            yield from source.read()

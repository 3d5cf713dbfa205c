"""Reading the corpus: the units of rung's sources dealt to datatrove tasks, as documents.

`SourceReader` is the first step of every stage that reads the sources; it turns each
`rung.records.Document` into a datatrove document (with its size, see `documents`) and counts
each `Skip` (undecodable, unparsable, ...) by reason for the cleaning report.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from datatrove.data import Document as DTDocument
from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from rung_pretrain.documents import NBYTES
from rung_pretrain.progress import ProgressFile
from rung_pretrain.sources.base import Skip, Unit

# Lone surrogates cannot be encoded as UTF-8; replace them.
_SURROGATE = re.compile("[\ud800-\udfff]")


def balance(units: Sequence[Unit], world_size: int) -> list[list[Unit]]:
    """Deal units to workers, largest first to the least loaded: balanced and deterministic."""
    loads = [0] * world_size
    shares: list[list[Unit]] = [[] for _ in range(world_size)]
    for index, unit in sorted(enumerate(units), key=lambda pair: (-pair[1].size, pair[0])):
        worker = min(range(world_size), key=lambda w: (loads[w], w))
        loads[worker] += unit.size
        shares[worker].append((index, unit))
    return [[unit for _, unit in sorted(share, key=lambda pair: pair[0])] for share in shares]


class SourceReader(PipelineStep):
    """Reads the units of rung sources dealt to this task; counts what it must skip."""

    type = "📖 - READER"
    name = "rung sources"

    def __init__(self, sources: Sequence[Any], units: Sequence[Unit], progress_dir: str | None = None) -> None:
        super().__init__()
        self.sources = list(sources)
        self.units = list(units)
        self.progress_dir = progress_dir

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        progress = ProgressFile(self.progress_dir, rank)
        mine = balance(self.units, world_size)[rank]
        try:
            for unit in mine:
                source = self.sources[unit.source]
                for item in source.read_unit(unit.key):
                    if isinstance(item, Skip):
                        self.stat_update(f"skipped/{item.reason}")
                        self.stat_update(f"skipped_bytes/{item.reason}", value=item.nbytes, unit="bytes")
                        progress.add(item.nbytes)
                        continue
                    text = item.text
                    try:
                        size = len(text.encode("utf-8"))
                    except UnicodeEncodeError:  # lone surrogates (from JSON) cannot be UTF-8
                        text = _SURROGATE.sub("\ufffd", text)
                        size = len(text.encode("utf-8"))
                    doc = DTDocument(text=text, id=item.id, metadata={"source": item.source, NBYTES: size})
                    self.stat_update("docs_out")
                    self.stat_update("bytes_out", value=size, unit="bytes")
                    progress.add(size)
                    yield doc
        finally:
            progress.close()

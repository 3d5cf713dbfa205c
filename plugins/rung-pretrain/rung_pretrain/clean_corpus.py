"""The clean corpus: the cleaned, deduplicated documents between the cleaning stages and the
tokenizer, as JSONL files (``{"id", "text"}`` per line, one file per task) in ``.work/clean``.

`TextWriter` writes it (the last step of the last cleaning stage); `read_clean` reads it in a
fixed order (tokenizer training); `CleanCorpusReader` deals its files to the tasks of the
shard stage.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep


class TextWriter(PipelineStep):
    """Writes the cleaned documents of a task as JSONL ({"id", "text"}): the clean corpus."""

    type = "💽 - WRITER"
    name = "clean corpus"

    def __init__(self, folder: str) -> None:
        super().__init__()
        self.folder = folder

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        Path(self.folder).mkdir(parents=True, exist_ok=True)
        path = Path(self.folder) / f"{rank:05d}.jsonl"
        with open(path.with_suffix(".tmp"), "w", encoding="utf-8") as out:
            for doc in data:
                out.write(json.dumps({"id": doc.id, "text": doc.text}, ensure_ascii=False) + "\n")
                self.stat_update("docs")
                yield doc
        os.replace(path.with_suffix(".tmp"), path)


def read_clean(folder: str | Path, files: Sequence[str] | None = None) -> Iterator[tuple[str, str]]:
    """(id, text) of the clean corpus, in a fixed order."""
    paths = [Path(folder) / f for f in files] if files is not None else sorted(Path(folder).glob("*.jsonl"))
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                record = json.loads(line)
                yield record["id"], record["text"]


class CleanCorpusReader(PipelineStep):
    """Reads the clean corpus (JSONL files written by the dedup stage); file i goes to task i % world_size."""

    type = "📖 - READER"
    name = "clean corpus"

    def __init__(self, folder: str) -> None:
        super().__init__()
        self.folder = folder

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        from datatrove.data import Document

        files = sorted(Path(self.folder).glob("*.jsonl"))
        for path in files[rank::world_size]:
            with open(path, encoding="utf-8") as handle:
                for line in handle:
                    record = json.loads(line)
                    yield Document(text=record["text"], id=record["id"])

"""What every corpus source implements: units (for parallel workers) and reading a unit."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from rung.records import Document


@dataclass(frozen=True)
class Skip:
    """Something that could not become a document: why, how many bytes, and where."""

    reason: str  # "undecodable", "unparsable", "no_text_field", "too_large"
    nbytes: int
    where: str


@dataclass(frozen=True)
class Unit:
    """A piece of a source that one worker reads whole: a file, or a range of rows."""

    source: int  # index of the source in the corpus
    key: str  # what `read_unit` understands (a path, "start:end")
    size: int  # bytes (an estimate for row ranges), to balance workers


def plain_options(options: Any) -> Any:
    """The plugin's own options class for a config section (the config's section models are
    built at run time and cannot be pickled to worker processes)."""
    for klass in type(options).__mro__:
        if klass.__module__ != "rung.config" and hasattr(klass, "model_fields"):
            if klass is type(options):
                return options
            data = options.model_dump(exclude={"name"} if "name" not in klass.model_fields else set())
            return klass.model_validate(data)
    return options


class SourceBase:
    """A `rung.interfaces.DataSource` that can also be read unit by unit."""

    label = "source"

    def __init__(self, options: Any, **_: Any) -> None:
        self.options = plain_options(options)

    def units(self) -> list[tuple[str, int]]:
        """(key, size in bytes) of every unit, in a fixed order."""
        raise NotImplementedError

    def read_unit(self, key: str) -> Iterator[Document | Skip]:
        """The documents of one unit (and a Skip for each thing that could not be read)."""
        raise NotImplementedError

    def read(self) -> Iterator[Document]:
        """Every document, streamed (DataSource)."""
        for key, _ in self.units():
            for item in self.read_unit(key):
                if isinstance(item, Document):
                    yield item

    def fingerprint(self) -> str:
        """Changes when the source's content probably changed (names, sizes, mtimes)."""
        digest = hashlib.sha256(json.dumps(self.describe(), sort_keys=True, default=str).encode())
        for key, size in self.units():
            digest.update(f"{key}\0{size}\0{self._mtime(key)}\n".encode())
        return digest.hexdigest()

    def _mtime(self, key: str) -> Any:
        return ""

    def describe(self) -> dict[str, Any]:
        """What the manifest records about this source."""
        return {"name": self.label, **self.options.model_dump(mode="json", exclude={"name"})}

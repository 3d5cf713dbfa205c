"""Cleaning filters: datatrove steps that change or remove documents, and count both.

Every step records, through datatrove's stats, `docs_in`, `bytes_in`, `docs_out`,
`bytes_out`, `changed` and, per reason, `removed/<reason>` and `removed_bytes/<reason>`;
`cleaning_report.report_from_stats` turns a stage's merged stats into the cleaning report.
"""

from __future__ import annotations

import re
import unicodedata

import numpy as np
from datatrove.data import Document as DTDocument
from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from rung_pretrain.documents import NBYTES, nbytes


class CleanStep(PipelineStep):
    """A step that may change or remove each document, and counts both."""

    type = "🧹 - CLEAN"

    def apply(self, doc: DTDocument) -> str | None:
        """Change `doc` in place (return None) or return why it must go."""
        raise NotImplementedError

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for doc in data:
            size = nbytes(doc)
            self.stat_update("docs_in")
            self.stat_update("bytes_in", value=size, unit="bytes")
            text = doc.text
            with self.track_time():
                reason = self.apply(doc)
            if reason is not None:
                self.stat_update(f"removed/{reason}")
                self.stat_update(f"removed_bytes/{reason}", value=size, unit="bytes")
                continue
            if doc.text is not text and doc.text != text:
                doc.metadata.pop(NBYTES, None)
                self.stat_update("changed")
            size = nbytes(doc)
            self.stat_update("docs_out")
            self.stat_update("bytes_out", value=size, unit="bytes")
            yield doc


class Normalize(CleanStep):
    name = "unicode normalisation"

    def __init__(self, form: str = "NFC") -> None:
        super().__init__()
        self.form = form

    def apply(self, doc: DTDocument) -> str | None:
        if not unicodedata.is_normalized(self.form, doc.text):
            doc.text = unicodedata.normalize(self.form, doc.text)
        return None


# C0 controls except tab, newline, carriage return and form feed; DEL; C1 controls.
_CONTROL = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f]")
_ASCII_CONTROL = bytes([*range(0, 9), 0x0B, *range(0x0E, 0x20), 0x7F])
_ALLOWED_C0 = np.zeros(32, dtype=bool)
_ALLOWED_C0[[9, 10, 12, 13]] = True


def _codepoints(text: str) -> np.ndarray:
    """The code points of `text` as a uint32 array (for vectorised character tests)."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


class ControlChars(CleanStep):
    name = "control characters"

    def apply(self, doc: DTDocument) -> str | None:
        if doc.text.isascii():  # fast path: bytes.translate deletes at memory speed
            data = doc.text.encode("ascii")
            kept = data.translate(None, _ASCII_CONTROL)
            if len(kept) != len(data):
                doc.text = kept.decode("ascii")
            return None
        points = _codepoints(doc.text)
        control = ((points < 32) & ~_ALLOWED_C0[np.minimum(points, 31)]) | ((points >= 0x7F) & (points <= 0x9F))
        if control.any():
            doc.text = _CONTROL.sub("", doc.text)
        return None


class Strip(CleanStep):
    name = "strip trailing whitespace"

    def apply(self, doc: DTDocument) -> str | None:
        text = doc.text.rstrip()
        if len(text) != len(doc.text):
            doc.text = text
        return None


class LengthFilter(CleanStep):
    name = "length"

    def __init__(self, min_chars: int = 1, max_chars: int | None = None) -> None:
        super().__init__()
        self.min_chars, self.max_chars = min_chars, max_chars

    def apply(self, doc: DTDocument) -> str | None:
        n = len(doc.text)
        if n == 0 and self.min_chars > 0:
            return "empty"
        if n < self.min_chars:
            return "too_short"
        if self.max_chars is not None and n > self.max_chars:
            return "too_long"
        return None


_ASCII_SPACE = b" \t\n\r\x0b\x0c"
_ASCII_LETTERS = bytes(range(65, 91)) + bytes(range(97, 123))
_ASCII_SPACE_MASK = np.zeros(128, dtype=bool)
_ASCII_SPACE_MASK[list(_ASCII_SPACE)] = True


class QualityFilter(CleanStep):
    """Cheap heuristics that catch data blobs, generated files and boilerplate."""

    name = "quality"

    def __init__(self, min_alpha_fraction: float | None = 0.25, max_line_chars: int | None = 20_000,
                 max_duplicate_line_fraction: float | None = 0.5, min_words: int | None = None) -> None:
        super().__init__()
        self.min_alpha_fraction = min_alpha_fraction
        self.max_line_chars = max_line_chars
        self.max_duplicate_line_fraction = max_duplicate_line_fraction
        self.min_words = min_words

    def apply(self, doc: DTDocument) -> str | None:
        text = doc.text
        if self.min_words is not None and len(text.split()) < self.min_words:
            return "too_few_words"
        if self.min_alpha_fraction is not None:
            if text.isascii():  # fast path: bytes.translate runs at memory speed
                data = text.encode("ascii")
                visible = len(data.translate(None, _ASCII_SPACE))
                letters = len(data) - len(data.translate(None, _ASCII_LETTERS))
            else:  # every non-ASCII character from U+00C0 on counts as a letter (a heuristic)
                points = _codepoints(text)
                visible = points.size - int(np.count_nonzero(_ASCII_SPACE_MASK[np.minimum(points, 127)]))
                low = points | 32
                letters = int(np.count_nonzero((low >= 97) & (low <= 122)) + np.count_nonzero(points >= 0xC0))
            if visible and letters / visible < self.min_alpha_fraction:
                return "few_letters"
        lines = text.split("\n")
        if self.max_line_chars is not None and max(map(len, lines)) > self.max_line_chars:
            return "long_line"
        if self.max_duplicate_line_fraction is not None:
            long_lines = [line for line in map(str.strip, lines) if len(line) >= 10]
            if len(long_lines) >= 10:
                repeats = len(long_lines) - len(set(long_lines))
                if repeats / len(long_lines) > self.max_duplicate_line_fraction:
                    return "repeated_lines"
        return None

"""A datatrove document as rung's preparation steps see it: its UTF-8 size and its number.

Both live in the document's metadata so every step after the reader can use them without
re-encoding the text: `nbytes(doc)` (computed once, dropped when a step changes the text)
and ``metadata[INDEX]``, the document's position in its task's stream (set by `dedup.Tag`;
dedup decisions refer to it).
"""

from __future__ import annotations

from datatrove.data import Document as DTDocument

NBYTES = "nbytes"
INDEX = "rung_index"


def nbytes(doc: DTDocument) -> int:
    value = doc.metadata.get(NBYTES)
    if value is None:
        value = doc.metadata[NBYTES] = len(doc.text.encode("utf-8", "surrogatepass"))
    return value

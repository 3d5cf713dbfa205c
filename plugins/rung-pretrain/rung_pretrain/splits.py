"""The train/validation splits of a finished shards folder: what the manifest says of them,
and the one document a tiny corpus's empty validation split gets.

Shard files are finished by the tasks of the shard stage; this runs after it, in `prepare`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def collect_splits(out: Path, val_fraction: float) -> dict[str, Any]:
    """Every finished shard per split; a validation split left empty gets one document."""
    splits = {}
    for split in ("train", "validation"):
        splits[split] = split_summary(out / split)
    if val_fraction > 0 and splits["validation"]["documents"] == 0 and splits["train"]["documents"] > 1:
        move_last_document(out)
        for split in ("train", "validation"):
            splits[split] = split_summary(out / split)
    return splits


def split_summary(folder: Path) -> dict[str, Any]:
    files, tokens, documents = [], 0, 0
    for meta_path in sorted(folder.glob("*.json")):
        meta = json.loads(meta_path.read_text())
        if meta["documents"] == 0:
            continue
        files.append(meta_path.stem)
        tokens += meta["tokens"]
        documents += meta["documents"]
    return {"files": files, "tokens": tokens, "documents": documents}


def move_last_document(out: Path) -> None:
    """Move the last document of a train shard into a new validation shard (tiny corpora)."""
    import numpy as np

    from rung_pretrain.reader import file_checksum
    from rung_pretrain.shards import ShardWriter

    train = out / "train"
    metas = {p.stem: json.loads(p.read_text()) for p in sorted(train.glob("*.json"))}
    stem = max(metas, key=lambda name: metas[name]["documents"])
    meta = metas[stem]
    if meta["documents"] < 2:
        return
    dtype = np.dtype(meta["dtype"])
    tokens = np.fromfile(train / f"{stem}.tokens", dtype=dtype)
    ends = np.fromfile(train / f"{stem}.idx", dtype="<u8")
    cut = int(ends[-2])
    writer = ShardWriter(out / "validation", 99999, meta["vocab_size"], meta["tokenizer"])
    writer.add(tokens[cut:])
    writer.close()
    kept = tokens[:cut]
    kept.tofile(train / f"{stem}.tokens")
    ends[:-1].tofile(train / f"{stem}.idx")
    meta.update(tokens=int(kept.size), documents=int(ends.size - 1), xxh64=file_checksum(kept))
    (train / f"{stem}.json").write_text(json.dumps(meta) + "\n")

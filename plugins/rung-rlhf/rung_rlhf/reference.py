"""Reference log-probabilities: computed once, before training, and cached on disk.

DPO compares the policy with the model as it was before training. Rather than keeping a
second model (or switching adapters off every step), the trainer runs the model once over
every pair before the first step, in the engine's evaluation context, and keeps each answer's
summed log-probability: a new LoRA adapter starts as the identity and full fine-tuning has
not moved yet, so that model *is* the reference. The numbers go to
`output_dir/reference/<name>.npz` with a key: a hash of the tokenized data (and its layout)
and of the model (the backend section and the bytes of the weights and config it loads).
A resumed run (whose model in memory is again the untrained one) reuses them; a key that
differs means other data or another model: recomputed for a fresh run, refused on resume.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rung.errors import RungError

from rung_rlhf import ops

FORMAT = 1  # bump when what is cached changes meaning

MODEL_FILES = ("*.safetensors", "*.bin", "config.json", "adapter_config.json")


def _hash_folder(digest: Any, folder: Path) -> None:
    for pattern in MODEL_FILES:
        for path in sorted(folder.glob(pattern)):
            digest.update(path.name.encode())
            with path.open("rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)


def model_key(backend_section: Mapping[str, Any]) -> str:
    """A hash of the model a backend section loads: its options (preset, architecture, seed,
    precision) and, for a checkpoint or adapter directory, its weights' and config's bytes."""
    digest = hashlib.sha256(json.dumps(dict(backend_section), sort_keys=True, default=str).encode())
    for option in ("model", "adapter"):
        value = backend_section.get(option)
        if isinstance(value, str) and Path(value).is_dir():
            _hash_folder(digest, Path(value))
    return digest.hexdigest()


def answer_logprobs(token_logprobs: Any, batch: Mapping[str, Any], rows: int) -> tuple[Any, Any]:
    """(chosen, rejected) summed log-probabilities [P] of a pairs batch (`rung_rlhf.pairs`) from
    a `token_logprobs` output [R, T - 1]; `rows`: rows per pair (1 shared, 2 separate)."""
    xp = ops.namespace(token_logprobs)
    segments = batch["answer_segments"]
    sums = [xp.sum(xp.reshape(ops.segment_sums(token_logprobs, segments, k), (-1, rows)), axis=-1) for k in (1, 2)]
    return sums[0], sums[1]


def model_inputs(batch: Mapping[str, Any]) -> dict[str, Any]:
    """What the framework objective takes of a pairs batch."""
    return {k: batch[k] for k in ("input_ids", "labels", "segment_ids") if k in batch}


def to_numpy(value: Any) -> np.ndarray:
    """A framework array (torch on any device, jax) as float64 numpy."""
    return np.asarray(value.tolist() if hasattr(value, "tolist") else value, dtype=np.float64)


def compute(engine: Any, token_logprobs: Callable, batches: Sequence[Mapping[str, Any]], rows: int) -> np.ndarray:
    """[N, 2] (chosen, rejected) log-probabilities of every pair of `batches`, by the model as
    it is now, in the engine's evaluation context."""
    found: list[np.ndarray] = []

    def evaluate(model: Any) -> dict[str, float]:
        for batch in batches:
            values, _ = token_logprobs(model, model_inputs(batch))
            chosen, rejected = answer_logprobs(values, batch, rows)
            found.append(np.stack([to_numpy(chosen), to_numpy(rejected)], axis=-1))
        return {}

    engine.evaluate(evaluate)
    return np.concatenate(found) if found else np.zeros((0, 2))


class ReferenceCache:
    """`folder/<name>.npz`: the log-probabilities [N, 2] and the key they were computed under."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.npz"

    def load(self, name: str) -> tuple[str, np.ndarray] | None:
        path = self.path(name)
        if not path.is_file():
            return None
        with np.load(path) as saved:
            return str(saved["key"]), np.asarray(saved["logprobs"], dtype=np.float64)

    def save(self, name: str, key: str, logprobs: np.ndarray) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        partial = self.folder / f"{name}.partial.npz"
        np.savez(partial, key=np.array(key), logprobs=logprobs)
        partial.replace(self.path(name))  # never a half-written cache


def reference_logprobs(cache: ReferenceCache, name: str, key: str, resuming: bool,
                       compute_now: Callable[[], np.ndarray]) -> tuple[np.ndarray, bool]:
    """The cached log-probabilities under `key`, or `compute_now()` saved under it; whether
    they came from the cache. On resume, a cache under another key is refused."""
    key = f"{FORMAT}:{key}"
    found = cache.load(name)
    if found is not None and found[0] == key:
        return found[1], True
    if found is not None and resuming:
        raise RungError(f"{cache.path(name)} holds reference log-probabilities of other data or another model "
                        "than this run's checkpoints were trained against; resume with the same data, model "
                        "and formatting options, or set trainer.resume: never")
    values = compute_now()
    cache.save(name, key, values)
    return values, False

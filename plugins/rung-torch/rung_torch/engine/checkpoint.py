"""Checkpoints that survive a kill at any moment, with no pickle anywhere.

Layout under `run.output_dir/checkpoints/`:

    latest                    one line, the name of the newest complete checkpoint
    step-00000100/
        model.safetensors     the model's full state dict
        optimizer.safetensors optimizer state tensors, flattened: state.<param>.<name>
        rng.safetensors       torch CPU/CUDA generator states (uint8), one set per rank
        state.json            step, optimizer hyperparameters and scalars, python and numpy RNG
                              states, file sizes, and `loop`: the core loop's state (each rank's
                              batch-stream position, tokens seen, metrics)

A checkpoint is written into `.tmp-step-...` beside its final place, every file fsynced,
then renamed into place (atomic on POSIX), then `latest` is replaced atomically. A kill
during a save leaves at worst a temp folder that resume ignores and the next save deletes.
`state.json` is written last and lists every file with its size and SHA-256: a folder is
"complete" when it parses and every file has that size, and resume takes the newest complete
one whose files still have their SHA-256 (`rung.checkpoint_files`), saying which newer ones
it skipped and why; when all are damaged, resume is an error naming them. A save that meets
a full disk is one line (`rung.disk.writing`): its temp folder removed, the previous
checkpoint untouched.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from rung.checkpoint_files import damage, digests, pick
from rung.errors import RungError

FORMAT = "rung-torch-checkpoint/1"
STATE_FILE = "state.json"
LATEST = "latest"
_STEP_DIR = re.compile(r"^step-(\d+)$")


# ----------------------------------------------------------------- flattening without pickle


def flatten_optimizer(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A torch optimizer state dict as (tensors for safetensors, the rest as JSON)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    keys = list(state_dict.get("state", {}))
    for key, entry in state_dict.get("state", {}).items():
        for name, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"state.{key}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(key), {})[name] = _jsonable(value)
    meta = {
        "keys": [str(k) for k in keys],
        "int_keys": all(isinstance(k, int) for k in keys),
        "scalars": scalars,
        "param_groups": [_jsonable(group) for group in state_dict.get("param_groups", [])],
    }
    return tensors, meta


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """The inverse of `flatten_optimizer`."""
    convert = int if meta.get("int_keys") else str
    state: dict[Any, dict[str, Any]] = {convert(k): {} for k in meta.get("keys", [])}
    for flat, tensor in tensors.items():
        key, name = flat[len("state."):].rsplit(".", 1)
        state.setdefault(convert(key), {})[name] = tensor
    for key, values in meta.get("scalars", {}).items():
        state.setdefault(convert(key), {}).update(values)
    groups = []
    for group in meta.get("param_groups", []):
        group = dict(group)
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
        if meta.get("int_keys"):
            group["params"] = [int(p) for p in group["params"]]
        groups.append(group)
    return {"state": state, "param_groups": groups}


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if torch.is_tensor(value):
        return value.item() if value.numel() == 1 else value.tolist()
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return value.tolist()
    return value


def unshare(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous, and no two entries sharing memory (safetensors refuses tied weights)."""
    seen: set[tuple[int, int]] = set()
    out = {}
    for name, tensor in tensors.items():
        tensor = tensor.detach().cpu().contiguous()
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if key in seen:
            tensor = tensor.clone()
        seen.add(key)
        out[name] = tensor
    return out


# ----------------------------------------------------------------- RNG states


def rng_state(device: torch.device) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """This process's RNG states: torch generators as uint8 tensors, python/numpy as JSON."""
    import random

    import numpy as np

    tensors = {"torch_cpu": torch.get_rng_state()}
    if device.type == "cuda":
        tensors["torch_cuda"] = torch.cuda.get_rng_state(device)
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    json_state = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
    }
    return tensors, json_state


def set_rng_state(tensors: dict[str, torch.Tensor], json_state: dict[str, Any], device: torch.device) -> None:
    import random

    import numpy as np

    torch.set_rng_state(tensors["torch_cpu"])
    if device.type == "cuda" and "torch_cuda" in tensors:
        torch.cuda.set_rng_state(tensors["torch_cuda"], device)
    version, internal, gauss = json_state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = json_state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


# ----------------------------------------------------------------- files, atomically


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` so that a reader sees the old content or the new, never half."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk, a kill: no temporary file stays behind
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


class CheckpointDir:
    """The `checkpoints/` folder of a run: save, find the latest complete one, prune."""

    def __init__(self, root: str | Path, keep: int = 2) -> None:
        self.root = Path(root)
        self.keep = max(1, keep)

    # -- writing

    def save(
        self,
        step: int,
        tensors: dict[str, dict[str, torch.Tensor]],
        state: dict[str, Any],
    ) -> Path:
        """Write one checkpoint atomically and point `latest` at it; returns its folder.

        `tensors` maps a file stem ("model", "optimizer", "rng") to its tensors; `state` is
        the JSON part. Older checkpoints beyond `keep` and stale temp folders are removed.
        """
        from rung.disk import writing

        final = self.root / step_dir_name(step)
        tmp = self.root / f".tmp-{final.name}-{os.getpid()}"
        needed = sum(t.numel() * t.element_size() for group in tensors.values() for t in group.values())
        previous = self.complete_steps()
        kept = f"the previous checkpoint {previous[0]} is kept" if previous else "no earlier checkpoint"
        # a full disk: one line, the temporary folder removed, the previous checkpoint untouched
        with writing(final, needed, remove=[tmp], note=kept):
            return self._write(step, final, tmp, tensors, state)

    def _write(self, step: int, final: Path, tmp: Path, tensors: dict[str, dict[str, torch.Tensor]],
               state: dict[str, Any]) -> Path:
        from safetensors.torch import save_file

        self.root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        files: dict[str, int] = {}
        for stem, group in tensors.items():
            path = tmp / f"{stem}.safetensors"
            save_file(unshare(group), str(path), metadata={"format": FORMAT})
            _fsync_file(path)
            files[path.name] = path.stat().st_size
        sha256 = {name: entry["sha256"] for name, entry in digests(tmp, files).items()}
        body = {"format": FORMAT, "step": step, "files": files, "sha256": sha256, **state}
        with open(tmp / STATE_FILE, "w", encoding="utf-8") as f:
            json.dump(body, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        if final.exists():  # a checkpoint of the same step (e.g. re-saved after a resume)
            old = self.root / f".old-{final.name}-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(self.root)
        write_text_atomic(self.root / LATEST, final.name + "\n")
        self.prune()
        return final

    def prune(self) -> None:
        """Keep the newest `keep` complete checkpoints; drop temp folders of dead saves."""
        complete = self.complete_steps()
        for path in complete[self.keep:]:
            shutil.rmtree(path, ignore_errors=True)
        for stale in self.root.glob(".tmp-step-*"):
            if not stale.name.endswith(f"-{os.getpid()}"):
                shutil.rmtree(stale, ignore_errors=True)
        for stale in self.root.glob(".old-step-*"):
            shutil.rmtree(stale, ignore_errors=True)

    # -- reading

    def complete_steps(self) -> list[Path]:
        """Complete checkpoint folders, newest first."""
        if not self.root.is_dir():
            return []
        found = []
        for path in self.root.iterdir():
            match = _STEP_DIR.match(path.name)
            if match and path.is_dir() and is_complete(path):
                found.append((int(match.group(1)), path))
        return [path for _, path in sorted(found, reverse=True)]

    def latest(self) -> Path | None:
        """The newest complete checkpoint whose files are intact (`verify`); damaged newer ones
        are skipped with a line each, and when every one is damaged it is an error naming them.

        The `latest` pointer is only a hint: a newer complete folder exists when a kill came
        between its rename and the pointer's update, so the scan decides.
        """
        candidates = sorted(
            (p for p in self.root.iterdir() if _STEP_DIR.match(p.name) and p.is_dir() and (p / STATE_FILE).exists()),
            key=step_of, reverse=True) if self.root.is_dir() else []
        return pick(candidates, verify, self.root)


def step_of(path: Path) -> int:
    match = _STEP_DIR.match(Path(path).name)
    return int(match.group(1)) if match else -1


def read_state(path: str | Path) -> dict[str, Any]:
    with open(Path(path) / STATE_FILE, encoding="utf-8") as f:
        return json.load(f)


def verify(path: str | Path) -> str | None:
    """What is wrong with the checkpoint at `path` (unreadable state, a missing file, a size or a
    SHA-256 that differs from what was written), or None when it is intact."""
    path = Path(path)
    try:
        state = json.loads((path / STATE_FILE).read_bytes().decode("utf-8"))
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            return f"{STATE_FILE} is not a {FORMAT} state"
        files, sums = state["files"], state.get("sha256") or {}
        expected = {name: {"size": size, **({"sha256": sums[name]} if name in sums else {})}
                    for name, size in files.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return f"its {STATE_FILE} is missing or unreadable"
    return damage(path, expected)


def is_complete(path: str | Path) -> bool:
    """True when `state.json` parses and every file it lists is there with its size."""
    path = Path(path)
    try:
        state = read_state(path)
        if state.get("format") != FORMAT:
            return False
        return all((path / name).stat().st_size == size for name, size in state["files"].items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def load_tensors(path: str | Path, stem: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    file = Path(path) / f"{stem}.safetensors"
    if not file.exists():
        return {}
    return load_file(str(file), device="cpu")


def find_checkpoint(resume: str, default_root: Path) -> Path | None:
    """The checkpoint `resume` names: "auto" (latest under `default_root`), "never", or a path.

    A path may be a checkpoint folder, a `checkpoints/` folder or a run folder.
    """
    if resume == "never":
        return None
    if resume == "auto":
        return CheckpointDir(default_root).latest()
    path = Path(resume).expanduser()
    if (path / STATE_FILE).exists():
        problem = verify(path)
        if problem is not None:
            raise RungError(f"trainer.resume: checkpoint {path} is damaged: {problem}")
        return path
    for root in (path, path / "checkpoints"):
        found = CheckpointDir(root).latest() if root.is_dir() else None
        if found is not None:
            return found
    raise RungError(f"trainer.resume: no complete checkpoint at {path}")

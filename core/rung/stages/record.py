"""`<output_dir>/stages.json`: what each stage of a staged run did, and the rule for skipping it.

    {"format": 1, "source": "examples/ladder.yaml",
     "stages": {"sft": {"kind": "sft", "status": "done", "hash": "…", "inputs": {"pretrain": "…"},
                        "run": "…", "started": "…", "finished": "…", "seconds": 41.2, "attempts": [41.2],
                        "output_dir": "runs/ladder/sft", "output": "runs/ladder/sft/model",
                        "metrics": {"val_loss": 1.93, "arith-mc/accuracy": 0.6}}}}

`hash` is the stage's merged, resolved config; `inputs` the `run` id of each stage it reads,
as they were when it ran; `run` a new id each time the stage finishes. A stage is skipped when
it finished, its hash and inputs are what they are now, and what it wrote is still there. A
stage that started and did not finish (`status: running`, the same hash and inputs) resumes:
its trainer continues from its own checkpoints. The file is rewritten atomically after every
change, so a killed run leaves it whole.

`seconds` is the stage's time over all its attempts, `attempts` each one's: a killed attempt
counts from its start to the last file it wrote in its folder (a checkpoint, a metrics line),
the work it did that the resumed attempt builds on; what it did after that is done again and
counted in the resumed attempt.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rung.errors import RungError

if TYPE_CHECKING:
    from rung.stages.plan import Stage

FORMAT = 1
FILE = "stages.json"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class Records:
    """The stages.json of one staged run's folder."""

    def __init__(self, folder: Path, source: str) -> None:
        self.path = Path(folder) / FILE
        self.data: dict[str, Any] = {"format": FORMAT, "source": source, "stages": {}}
        if self.path.is_file():
            try:
                loaded = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise RungError(f"{self.path}: cannot be read ({exc}); delete it to run every stage again") from None
            if not isinstance(loaded, dict) or not isinstance(loaded.get("stages"), dict):
                raise RungError(f"{self.path}: not a stages record; delete it to run every stage again")
            self.data["stages"] = loaded["stages"]
        self.data["source"] = source

    def get(self, name: str) -> dict[str, Any] | None:
        entry = self.data["stages"].get(name)
        return entry if isinstance(entry, dict) else None

    def run_id(self, name: str) -> str | None:
        entry = self.get(name)
        return entry.get("run") if entry and entry.get("status") == "done" else None

    def inputs(self, stage: Stage) -> dict[str, str | None]:
        """The run ids of the stages `stage` reads, as they are now."""
        return {name: self.run_id(name) for name in stage.depends}

    def skippable(self, stage: Stage) -> bool:
        """Finished, unchanged (its config and the runs it reads), and its outputs still there."""
        entry = self.get(stage.name)
        return bool(entry and entry.get("status") == "done" and entry.get("hash") == stage.hash
                    and entry.get("inputs") == self.inputs(stage) and stage.kind.skippable
                    and stage.kind.done(stage))

    def resumable(self, stage: Stage) -> bool:
        """Started with this very config and inputs and not finished: killed, so it continues."""
        entry = self.get(stage.name)
        return bool(entry and entry.get("status") == "running" and entry.get("hash") == stage.hash
                    and entry.get("inputs") == self.inputs(stage))

    def started(self, stage: Stage, resume: bool = False) -> None:
        """A new attempt at `stage`; a resumed one keeps the times of the attempts before it."""
        earlier: list[float] = []
        old = self.get(stage.name)
        if resume and old:
            earlier = [float(s) for s in old.get("attempts") or []] + [_killed_seconds(old, stage.output_dir)]
        self.data["stages"][stage.name] = {
            "kind": stage.kind.name, "status": "running", "hash": stage.hash, "inputs": self.inputs(stage),
            "started": _now(), "began": time.time(), "attempts": earlier, "output_dir": str(stage.output_dir),
            "output": None if stage.output is None else str(stage.output),
        }
        self.save()

    def finished(self, stage: Stage, seconds: float, metrics: dict[str, float], extra: dict[str, Any]) -> None:
        """The attempt that took `seconds` finished: the stage's time is the sum of its attempts."""
        entry = self.data["stages"][stage.name]
        finished = _now()
        attempts = [*entry.get("attempts", []), round(seconds, 2)]
        entry.update(status="done", finished=finished, seconds=round(sum(attempts), 2), attempts=attempts,
                     metrics=metrics, **extra)
        entry["run"] = hashlib.sha256(f"{stage.hash} {finished} {seconds}".encode()).hexdigest()[:16]
        self.save()

    def save(self) -> None:
        from rung.evaluation import write_json_atomic

        write_json_atomic(self.path, self.data)


def _killed_seconds(entry: dict[str, Any], folder: Path) -> float:
    """How long a killed attempt ran: from its start to the last file it wrote under `folder`."""
    began = entry.get("began")
    if not isinstance(began, (int, float)):
        try:
            began = _dt.datetime.fromisoformat(str(entry.get("started"))).timestamp()
        except ValueError:
            return 0.0
    written = [p.stat().st_mtime for p in Path(folder).rglob("*") if p.is_file()] if Path(folder).is_dir() else []
    return round(max(0.0, max(written, default=began) - began), 2)

"""examples/ladder_task.py, the seed ladder's task maker, run as the ladder runs it (a subprocess):
the same arguments write the same files, held-out instructions are never trained on, every
multiple-choice item has four different choices with the right one among them, each preference
pair prefers the right expression, and the rehearsal pieces are standard-library source."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "ladder_task.py"


def make(out: Path) -> dict[str, list[dict]]:
    subprocess.run([sys.executable, str(SCRIPT), "--train", "300", "--eval", "40", "--replay", "20",
                    "--replay-chars", "150", "--out", str(out)], check=True, capture_output=True, timeout=300)
    return {str(p.relative_to(out)): [json.loads(line) for line in p.read_text().splitlines()]
            for p in sorted(out.rglob("*.jsonl"))}


def test_the_task_files_are_reproducible_held_out_and_consistent(tmp_path: Path):
    files = make(tmp_path / "a")
    assert files == make(tmp_path / "b")
    train, held = files["task/train.jsonl"], files["task/eval.jsonl"]
    task = [r for r in train if r["messages"][0]["role"] == "user"]
    pieces = [r["messages"][0]["content"] for r in train if r["messages"][0]["role"] == "assistant"]
    assert len(task) == 300 and len(pieces) == 20 and len(held) == 40
    trained = {r["messages"][0]["content"] for r in task}
    asked = {r["messages"][0]["content"] for r in held}
    assert len(asked) == 40 and not trained & asked
    answers = {r["messages"][0]["content"]: r["messages"][1]["content"] for r in task + held}
    for item in files["eval/choice.jsonl"]:
        assert len(set(item["choices"])) == 4 and item["choices"][item["answer"]] == answers[item["question"]]
    assert [(r["prompt"], r["reference"]) for r in files["eval/generate.jsonl"]] == \
           [(q, answers[q]) for q in (r["messages"][0]["content"] for r in held)]
    for name, count in (("pairs/preferences.jsonl", 300), ("pairs/preferences_eval.jsonl", 40)):
        pairs = files[name]
        assert len(pairs) == count
        assert all(p["chosen"] == answers[p["prompt"]] != p["rejected"] for p in pairs)
    # every answer is a Python expression
    for answer in answers.values():
        compile(answer, "<answer>", "eval")
    # rehearsal pieces: short runs of whole lines of some standard-library file
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    sample = pieces[0]
    assert 0 < len(sample) <= 150
    assert any(sample in p.read_text(encoding="utf-8", errors="replace") for p in stdlib.rglob("*.py"))

"""A staged config through the other doors: `rung.run(path)` runs its stages as `rung run` does,
and `rung config show` prints every stage as it will run (inherited sections merged in, `from:`
resolved, defaults filled in) without running anything."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.stages.conftest import records, rung, run_ids, write_workspace


def test_config_show_prints_every_stage_merged_and_resolved(tmp_path: Path):
    write_workspace(tmp_path)
    done = rung(tmp_path, "config", "show", "ladder.yaml", "stages.sft.trainer.steps=7")
    shown = yaml.safe_load(done.stdout)
    assert shown["output_dir"] == "out"
    assert [(s["name"], s["kind"]) for s in shown["stages"]] == [
        ("pretrain", "pretrain"), ("sft", "sft"), ("eval", "eval"), ("gguf", "export"), ("serve", "serve")]
    pretrain, sft, evaluation, gguf, serve = shown["stages"]
    # the top-level backend merged under each stage's own, the stage's keys winning
    assert pretrain["backend"]["name"] == sft["backend"]["name"] == serve["backend"]["name"] == "torch"
    assert pretrain["backend"]["model"] == "test" and pretrain["backend"]["device"] == "cpu"
    # `from:` resolved to what the earlier stage writes; the override applied; defaults filled in
    assert sft["backend"]["model"] == "out/pretrain/model"
    assert evaluation["backend"]["model"] == gguf["model"] == serve["backend"]["model"] == "out/sft/model"
    assert sft["trainer"]["steps"] == 7 and "learning_rate" in sft["trainer"]
    assert sft["output_dir"] == "out/sft" and evaluation["tasks"][0]["name"] == "heldout"
    assert not (tmp_path / "out").exists()  # nothing ran


def test_rung_run_in_python_runs_the_stages_of_a_staged_file(ladder_copy: Path, monkeypatch):
    pytest.importorskip("torch")
    import rung

    monkeypatch.chdir(ladder_copy)
    before = run_ids(ladder_copy)
    rows = rung.run("ladder.yaml", ["stages.eval.seed=1"])  # eval changed: it and what reads it rerun
    assert [(row.stage, row.status) for row in rows] == [
        ("pretrain", "skipped"), ("sft", "skipped"), ("eval", "ran"), ("gguf", "skipped"), ("serve", "printed")]
    after = run_ids(ladder_copy)
    assert after["eval"] != before["eval"] and after["sft"] == before["sft"]
    evaluated = json.loads((ladder_copy / "out/eval/eval.json").read_text())
    assert rows[2].metrics == records(ladder_copy)["eval"]["metrics"] == \
        {"heldout/bits_per_byte": evaluated["heldout"]["bits_per_byte"]}

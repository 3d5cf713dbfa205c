"""`rung run` on a staged config, through the real command line: every stage runs in order and
is recorded; a second run skips them; a changed stage reruns with the stages that read it;
`--only` and `--from` rerun parts; the summary table shows what the stages wrote."""

from __future__ import annotations

import json
from pathlib import Path

from tests.stages.conftest import records, rung, run_ids

STAGES = ["pretrain", "sft", "eval", "gguf", "serve"]


def test_every_stage_runs_in_order_and_is_recorded(finished_ladder: Path):
    folder = finished_ladder
    log = (folder / "first-run.txt").read_text(encoding="utf-8")
    order = [log.index(f"stage {i + 1}/5: {name}") for i, name in enumerate(STAGES)]
    assert order == sorted(order)
    entries = records(folder)
    assert sorted(entries) == sorted(STAGES) and all(e["status"] == "done" for e in entries.values())
    # each model came from the stage before it, by `from:`
    sft_config = (folder / "out/sft/config.yaml").read_text(encoding="utf-8")
    assert "model: out/pretrain/model" in sft_config
    assert (folder / "out/pretrain/model/model.safetensors").is_file()
    assert entries["sft"]["inputs"] == {"pretrain": entries["pretrain"]["run"]}
    assert set(entries["gguf"]["inputs"]) == {"sft"}
    written = Path(folder / entries["gguf"]["written"])
    assert written.suffix == ".gguf" and written.parent == folder / "out/gguf" and written.stat().st_size > 0
    # key metrics are those the stages wrote: eval.json's task results, metrics.jsonl's latest
    evaluated = json.loads((folder / "out/eval/eval.json").read_text())
    assert entries["eval"]["metrics"] == {"heldout/bits_per_byte": evaluated["heldout"]["bits_per_byte"]}
    logged = [json.loads(line) for line in (folder / "out/pretrain/metrics.jsonl").read_text().splitlines()]
    assert entries["pretrain"]["metrics"]["val_loss"] == [r["val_loss"] for r in logged if "val_loss" in r][-1]
    # the serve stage says how to serve the last model, and starts no server
    assert entries["serve"]["command"] == "rung serve -b torch -m out/sft/model -o device=cpu -o precision=fp32"
    assert "serve it: rung serve -b torch -m out/sft/model" in log
    table = log[log.index("ladder.yaml: 5 stages"):]
    for name in STAGES:
        assert name in table
    assert "heldout/bits_per_byte" in table and "out/pretrain/model" in table


def test_a_second_run_skips_every_finished_stage(finished_ladder: Path):
    before = run_ids(finished_ladder)
    done = rung(finished_ladder, "run", "ladder.yaml")
    log = done.stdout + done.stderr
    for name in ["pretrain", "sft", "eval", "gguf"]:
        assert f"stage {name}: finished before and unchanged, skipped" in log
    assert "stage 1/5" not in log and "training" not in log
    after = run_ids(finished_ladder)
    assert {k: after[k] for k in STAGES[:4]} == {k: before[k] for k in STAGES[:4]}


def test_a_changed_stage_reruns_with_every_stage_that_reads_it(ladder_copy: Path):
    before = run_ids(ladder_copy)
    done = rung(ladder_copy, "run", "ladder.yaml", "stages.sft.trainer.steps=6")
    log = done.stdout + done.stderr
    after = run_ids(ladder_copy)
    assert after["pretrain"] == before["pretrain"] and "stage pretrain: finished before and unchanged" in log
    for name in ["sft", "eval", "gguf"]:
        assert after[name] != before[name], name
    sft = [json.loads(line) for line in (ladder_copy / "out/sft/metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in sft) == 6  # a fresh run of the new config, not a resumed old one
    # the same change in the file itself: now recorded, so nothing more to do
    text = (ladder_copy / "ladder.yaml").read_text().replace("name: sft, steps: 4", "name: sft, steps: 6")
    (ladder_copy / "ladder.yaml").write_text(text)
    assert {k: v for k, v in run_ids(ladder_copy).items() if k != "serve"} == \
           {k: v for k, v in after.items() if k != "serve"}
    rung(ladder_copy, "run", "ladder.yaml")
    assert {k: v for k, v in run_ids(ladder_copy).items() if k != "serve"} == \
           {k: v for k, v in after.items() if k != "serve"}


def test_only_runs_one_stage_and_from_reruns_from_a_stage_on(ladder_copy: Path):
    before = run_ids(ladder_copy)
    rung(ladder_copy, "run", "ladder.yaml", "--only", "eval")
    after_only = run_ids(ladder_copy)
    assert [k for k in STAGES if after_only[k] != before[k]] == ["eval"]  # (serve did not run either)

    done = rung(ladder_copy, "run", "ladder.yaml", "--from", "eval")
    after_from = run_ids(ladder_copy)
    assert [k for k in STAGES if after_from[k] != after_only[k]] == ["eval", "gguf", "serve"]
    assert "stage sft: finished before and unchanged, skipped" in done.stdout + done.stderr

    wrong = rung(ladder_copy, "run", "ladder.yaml", "--only", "evl", check=False)
    assert wrong.returncode != 0
    assert wrong.stderr.strip().splitlines() == [
        "rung: error: --only evl: no such stage in ladder.yaml (did you mean 'eval'?); "
        "stages: pretrain, sft, eval, gguf, serve"]

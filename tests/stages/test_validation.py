"""Every stage of a staged config is checked before any runs: errors name the file, the line and
the path from the top (`stages[2].trainer...`), in one line; paths an earlier stage will write
count as present; top-level sections are inherited, so one `backend.name` switches the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.stages.conftest import LADDER, records, rung, write_workspace


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def test_validate_passes_before_any_stage_has_written_what_later_ones_read(tmp_path: Path):
    write_workspace(tmp_path)
    done = rung(tmp_path, "config", "validate", "ladder.yaml")
    assert done.stdout.strip() == "ladder.yaml: valid (5 stages: pretrain, sft, eval, gguf, serve)"
    assert not (tmp_path / "out").exists()


def test_a_bad_key_in_stage_three_stops_the_run_before_stage_one(tmp_path: Path):
    config = LADDER.replace("trainer: {name: sft, steps: 4,", "trainer: {name: sft, steps: 4, learning_rat: 0.1,")
    config = config.replace("  - name: eval\n", "  - name: eval\n    limit: 0\n", 1)
    # stage 3 (index 1 is sft): put the bad key in sft, the second stage, and a bad value in eval, the third
    write_workspace(tmp_path, config)
    line = line_of(config, "learning_rat")
    for command in (["config", "validate"], ["run"]):
        done = rung(tmp_path, *command, "ladder.yaml", check=False)
        assert done.returncode == 2
        assert done.stderr.strip().splitlines() == [
            f"rung: error: ladder.yaml:{line}: stages[1].trainer.learning_rat: unknown key 'learning_rat' "
            f"(did you mean 'learning_rate'?); allowed: " + done.stderr.split("allowed: ")[1].strip()]
    assert not (tmp_path / "out").exists()  # nothing ran

    fixed = config.replace(" learning_rat: 0.1,", "")
    (tmp_path / "ladder.yaml").write_text(fixed)
    done = rung(tmp_path, "run", "ladder.yaml", check=False)
    assert done.returncode == 2
    assert done.stderr.strip() == (f"rung: error: ladder.yaml:{line_of(fixed, 'limit: 0')}: stages[2].limit: "
                                   "Input should be greater than or equal to 1 (got 0)")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("bad, said", [
    ("pretrian", "no stage named 'pretrian' runs before this one (did you mean 'pretrain'?); "
                 "stages before it: pretrain"),
    ("eval", "stage 'eval' runs after this one (stages[2]); a stage reads only what earlier stages wrote"),
    ("sft", "stage 'sft' is this stage; a stage reads only what earlier stages wrote"),
])
def test_from_an_unknown_or_later_stage_is_one_line(tmp_path: Path, bad: str, said: str):
    config = LADDER.replace("backend: {model: {from: pretrain}}", f"backend: {{model: {{from: {bad}}}}}")
    write_workspace(tmp_path, config)
    done = rung(tmp_path, "config", "validate", "ladder.yaml", check=False)
    assert done.returncode == 2
    line = line_of(config, f"from: {bad}}}")
    assert done.stderr.strip().splitlines() == [
        f"rung: error: ladder.yaml:{line}: stages[1].backend.model.from: {said}"]


def test_top_level_sections_are_inherited_and_one_backend_name_switches_the_file(tmp_path: Path, monkeypatch):
    from rung.stages.plan import load_plan

    path = write_workspace(tmp_path)
    monkeypatch.chdir(tmp_path)
    plan = load_plan(path, ["backend.name=jax", "stages.sft.trainer.steps=9"])
    by_name = {s.name: s for s in plan.stages}
    for name in ("pretrain", "sft", "eval", "serve"):
        backend = by_name[name].config.backend
        assert backend.name == "jax" and backend.precision == "fp32" and backend.device == "cpu", name
    assert by_name["pretrain"].config.backend.model == "test"
    assert by_name["sft"].config.backend.model == "out/pretrain/model"
    assert by_name["sft"].config.trainer.steps == 9
    assert by_name["serve"].kind.command(by_name["serve"]).startswith("rung serve -b jax -m out/sft/model")
    assert by_name["sft"].depends == ["pretrain"] and by_name["gguf"].depends == ["sft"]


def test_a_plugin_section_naming_another_plugin_replaces_the_inherited_one(tmp_path: Path):
    from rung.stages.plan import merge

    top = {"backend": {"name": "torch", "device": "cpu"}, "data": {"name": "corpus", "workers": 1}}
    stage = {"backend": {"model": "m"}, "data": {"name": "chat_jsonl", "path": "x.jsonl"}}
    assert merge(top, stage) == {"backend": {"name": "torch", "device": "cpu", "model": "m"},
                                 "data": {"name": "chat_jsonl", "path": "x.jsonl"}}


def test_the_example_ladder_validates_on_a_fresh_clone_and_on_jax(monkeypatch):
    """examples/ladder.yaml: every stage checks out before any has run (nothing of runs/ needed),
    in the seed's order, each model from the stage before it; `backend.name=jax` switches it all."""
    from rung.stages.plan import load_plan

    root = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(root)
    for overrides in (["output_dir=/nonexistent/ladder"], ["backend.name=jax"]):
        plan = load_plan("examples/ladder.yaml", overrides)
        kinds = [s.kind.name for s in plan.stages]
        assert kinds == ["command", "prepare", "pretrain", "eval", "sft", "eval", "dpo", "eval", "export", "serve"]
        by_name = {s.name: s for s in plan.stages}
        assert sorted(by_name["sft"].depends) == ["pretrain", "task-data"]
        assert sorted(by_name["dpo"].depends) == ["sft", "task-data"]
        assert sorted(by_name["eval-sft"].depends) == ["sft", "task-data"]  # its task items: the task's script
        assert by_name["pretrain"].depends == ["prepare"]  # its corpus's shards, not said by from:
        assert by_name["gguf"].config.format == "gguf" and by_name["gguf"].depends == ["dpo"]
        frameworks = {s.config.backend.name for s in plan.stages if getattr(s.config, "backend", None)}
        assert frameworks == {"jax" if overrides == ["backend.name=jax"] else "torch"}
        assert by_name["sft"].config.backend.model == f"{plan.output_dir}/pretrain/model"


EVAL_ON_WRITTEN_ITEMS = """\
  - name: items
    kind: command
    run: [python, items.py]
    outputs: [items.jsonl]
  - name: eval-items
    backend: {model: {from: sft}}
    kind: eval
    tasks: [{kind: multiple_choice, name: sums, path: items.jsonl, choice_prefix: ""}]
"""


def test_an_eval_task_on_items_an_earlier_stage_writes_validates_before_they_exist(ladder_copy: Path):
    config = (ladder_copy / "ladder.yaml").read_text() + EVAL_ON_WRITTEN_ITEMS
    (ladder_copy / "items.py").write_text("import json\n"
                                          "row = {'question': '1+1=', 'choices': ['2', '3'], 'answer': 0}\n"
                                          "open('items.jsonl', 'w').write(json.dumps(row) + '\\n')\n")
    (ladder_copy / "ladder.yaml").write_text(config)
    assert not (ladder_copy / "items.jsonl").exists()
    done = rung(ladder_copy, "config", "validate", "ladder.yaml")
    assert done.stdout.strip().endswith("items, eval-items)")
    # its options are still checked, by the task kind's own model, in one line
    bad = rung(ladder_copy, "config", "validate", "ladder.yaml", "stages.eval-items.tasks.0.choice_prefx=x",
               check=False)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        f"rung: error: ladder.yaml:{line_of(config, 'name: sums')}: stages[6].tasks.0: choice_prefx: "
        "Extra inputs are not permitted"]
    assert not (ladder_copy / "items.jsonl").exists()
    rung(ladder_copy, "run", "ladder.yaml")
    entry = records(ladder_copy)["eval-items"]
    assert entry["status"] == "done" and "sums/accuracy" in entry["metrics"]

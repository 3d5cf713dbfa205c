"""Staged run configs: the whole ladder (prepare, pretrain, sft, dpo, eval, export, serve) in one file.

A run config may hold `stages:`, a list of named stages run in order by `rung run FILE`:

    output_dir: runs/ladder          # the ladder's folder: stages.json, and a folder per stage
    backend: {name: torch}           # every top-level section is inherited by every stage
    stages:
      - name: pretrain
        backend: {model: tiny}       # deep-merged over the top-level backend
        tokenizer: {name: byte}
        data: {name: corpus, sources: [{name: stdlib}]}
        trainer: {name: pretrain, steps: 100}
      - name: sft
        backend: {model: {from: pretrain}}   # the model folder the pretrain stage saved
        data: {name: chat_jsonl, path: data/train.jsonl}
        trainer: {name: sft, steps: 50}
      - name: eval-sft
        kind: eval
        backend: {model: {from: sft}}
        tasks: [examples/eval/arith_mc.yaml]
      - {name: gguf, kind: export, model: {from: sft}, format: gguf}
      - {name: serve, kind: serve, backend: {model: {from: sft}}}

A stage is a normal run section plus `name` (and `kind` where its keys do not say it): a trainer
stage (any registered trainer: `trainer.name`), or `prepare`, `eval`, `export`, `serve` or
`command` (`stages.kinds`). `{from: STAGE}` anywhere in a stage is the output of an earlier
stage (a trainer's model folder, prepare's shards, eval's eval.json, export's folder or file,
a command's first output). Every stage is validated before the first one runs, paths that
earlier stages will write counting as present (`rung.paths.planned_paths`).

`<output_dir>/stages.json` records each finished stage: its config hash, the runs of the stages
it reads, its outputs, time and key metrics. The next run skips a finished stage whose config
and inputs are unchanged, resumes one that was killed (its trainer continues from its
checkpoints), and reruns a changed one and every stage that reads it. `--from STAGE` reruns
from a stage on, `--only STAGE` one stage. One table at the end says each stage's time,
metrics and outputs.

`rung config show FILE` prints `plan_to_yaml`: every stage as it will run (top-level sections
merged in, `from:` resolved, every default filled in). `rung.run(FILE)` runs the stages
as `rung run FILE` does.

Modules: `plan` (reading, merging, `from:`, validation), `kinds` (what each kind takes, writes,
runs and reports), `record` (stages.json and the skip rule), `runner` (running a plan, the table).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def is_staged(path: str | Path) -> bool:
    """Whether the YAML config at `path` holds `stages:` (a cheap look before full validation)."""
    from rung.yaml_lines import load_yaml_with_lines

    data, _ = load_yaml_with_lines(path)
    return isinstance(data, dict) and "stages" in data


def load_plan(path: str | Path, overrides: tuple[str, ...] | list[str] = ()) -> Any:
    """The validated plan of a staged config (`rung.stages.plan.Plan`)."""
    from rung.stages.plan import load_plan as load

    return load(path, overrides)


def plan_to_yaml(plan: Any) -> str:
    """A plan as YAML: its folder and every stage's validated config (defaults filled in,
    top-level sections merged in, `from:` resolved to paths, secrets left out)."""
    import yaml

    from rung.config import config_to_dict

    stages = [{"name": stage.name, "kind": stage.kind.name, **config_to_dict(stage.config)} for stage in plan.stages]
    return yaml.safe_dump({"output_dir": str(plan.output_dir), "stages": stages}, sort_keys=False)

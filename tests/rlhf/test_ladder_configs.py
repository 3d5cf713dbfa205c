"""The Level 2 ladder's worked example (examples/ladder/, scripts/ladder.sh): every config
validates against the installed trainers and reads what the ladder's data commands write; its
rows fit its lengths; and examples/ladder/evaluate.py measures what the trainers themselves
measure — the configs run for a few steps on rung's `test` preset, the real files otherwise."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LADDER = ROOT / "examples" / "ladder"
CONFIGS = {"sft": "sft", "reward": "reward", "dpo": "dpo", "grpo": "grpo", "ppo": "ppo",
           "ppo_verifiable": "ppo"}  # file stem -> trainer


def load(stem: str, *overrides: str):
    from rung.config import load_config

    return load_config(LADDER / f"{stem}.yaml", list(overrides))


def write_ladder_data(out: Path, train: int = 2000, held: int = 200) -> set[str]:
    """What scripts/ladder.sh's two data commands write (paths relative to the run folder)."""
    from rung_lora.synthetic import write_task
    from rung_rlhf.synthetic import write

    written = [*write_task("arithmetic", out / "runs/ladder/data", train, held),
               *write(out / "runs/ladder/feedback", train, held).values()]
    return {str(Path(p).relative_to(out)) for p in written}


@pytest.fixture
def ladder_folder(tmp_path, monkeypatch):
    """A folder where the ladder has run as far as each config needs: its data written and the
    sft and reward model folders there (a config is validated against the paths it will read),
    the current folder, as scripts/ladder.sh runs from the repository root."""
    written = write_ladder_data(tmp_path, train=20, held=5)
    for step in ("sft", "reward"):
        (tmp_path / "runs/ladder" / step / "model").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    return written


def test_every_ladder_config_validates_and_reads_what_the_ladder_writes(ladder_folder):
    script = (ROOT / "scripts" / "ladder.sh").read_text(encoding="utf-8")
    written = ladder_folder
    outputs = {}
    for stem, trainer in CONFIGS.items():
        config = load(stem)
        assert config.trainer.name == trainer, stem
        assert f"examples/ladder/{stem}.yaml" in script, f"scripts/ladder.sh does not run {stem}.yaml"
        reads = [config.data.path] + ([config.trainer.eval_data["path"]] if config.trainer.eval_data else [])
        assert set(reads) <= written, f"{stem}.yaml reads {reads}, the ladder writes {sorted(written)}"
        outputs[stem] = config.output_dir
    assert len(set(map(str, outputs.values()))) == len(outputs)  # no run writes over another
    sft_model = f"{outputs['sft']}/model"
    for stem in CONFIGS:
        if stem != "sft":  # every other rung starts from the sft base
            assert load(stem).backend.model == sft_model, stem
    assert load("ppo").trainer.reward_model["model"] == f"{outputs['reward']}/model"
    assert [r["name"] for r in load("ppo_verifiable").trainer.rewards] == ["exact_match"]
    assert [r["name"] for r in load("grpo").trainer.rewards] == ["exact_match"]


def test_a_ladder_config_is_refused_before_the_step_it_reads_from_has_run(ladder_folder):
    """Validation checks the paths a run will read: dpo before sft has saved its model is one line."""
    import shutil

    from rung.errors import ConfigError

    shutil.rmtree("runs/ladder/sft/model")
    with pytest.raises(ConfigError, match=r"dpo.yaml:\d+: backend.model: 'runs/ladder/sft/model' is not a "
                                          r"checkpoint directory \(it does not exist\)"):
        load("dpo")


def test_the_ladder_template_is_short_and_every_row_fits_its_length(ladder_folder):
    import rung
    from rung.records import Message

    from rung_lora.templates import make_renderer

    tokenizer = rung.tokenizer("byte")
    renderer = make_renderer(load("sft").trainer.chat_template, tokenizer)
    turn = [Message("user", "17+72="), Message("assistant", "89")]
    assert tokenizer.encode(renderer(turn)) == [259, *b"17+72=", 260, *b"89", 262]  # <|user|> <|assistant|> <|end|>
    assert "<|end|>" in renderer.stop
    longest_prompt = len(tokenizer.encode(renderer([Message("user", "99+99=")], add_generation_prompt=True)))
    longest_answer = len(b"198") + 1  # and its end of turn
    for stem in ("reward", "dpo"):
        o = load(stem).trainer
        assert longest_prompt <= o.max_prompt_length and longest_answer <= o.max_completion_length, stem
        assert longest_prompt + 2 * longest_answer <= o.max_length, stem  # a prompt and both answers, one row
    grpo = load("grpo").trainer
    assert longest_prompt + grpo.num_generations * grpo.max_completion_length <= grpo.max_length
    for stem in ("grpo", "ppo", "ppo_verifiable"):
        o = load(stem).trainer
        assert longest_answer <= o.max_completion_length <= load("sft").trainer.max_new_tokens, stem
        assert longest_prompt + o.max_completion_length <= o.max_length, stem


def metrics(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_evaluate_measures_what_the_trainers_measure(tmp_path, monkeypatch, capsys):
    """The ladder's sft, reward and ppo configs, a few steps each on the `test` preset; the
    table's figures equal those the runs logged: sft's held-out exact match, the reward
    model's held-out pairwise accuracy, and ppo's greedy held-out reward-model score before
    its first step (other code: sample_tokens, the trainer's formatting, shared-prompt rows)."""
    pytest.importorskip("torch")
    import rung

    monkeypatch.chdir(tmp_path)
    write_ladder_data(tmp_path, train=64, held=16)
    small = ["trainer.batch_size=8", "trainer.warmup_steps=0", "trainer.log_every=4"]
    rung.run(LADDER / "sft.yaml", ["backend.model=test", "trainer.steps=8", "trainer.eval_every=8",
                                   "trainer.eval_generate=16", *small])
    rung.run(LADDER / "reward.yaml", ["trainer.steps=4", "trainer.eval_every=4", *small])
    rung.run(LADDER / "ppo.yaml", ["trainer.steps=8", "trainer.eval_every=100", "trainer.eval_generate=16", *small,
                                   "trainer.log_every=2"])

    spec = importlib.util.spec_from_file_location("ladder_evaluate", LADDER / "evaluate.py")
    evaluate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(evaluate)
    evaluate.main(["--prompts", "runs/ladder/feedback/prompts_eval.jsonl", "--reward-model", "runs/ladder/reward/model",
                   "--pairs", "runs/ladder/feedback/preferences_eval.jsonl", "--json", "table.json",
                   "sft=runs/ladder/sft/model", "ppo=runs/ladder/ppo/model"])
    table = json.loads(Path("table.json").read_text())
    printed = capsys.readouterr().out
    assert "sft" in printed and "pairwise accuracy" in printed

    sft_logged = [m["eval_exact_match"] for m in metrics(tmp_path / "runs/ladder/sft") if "eval_exact_match" in m]
    assert table["sft"]["exact_match"] == pytest.approx(sft_logged[-1])
    reward_logged = [m["eval_accuracy"] for m in metrics(tmp_path / "runs/ladder/reward") if "eval_accuracy" in m]
    assert table["reward_model_pairs"]["pairwise_accuracy"] == pytest.approx(reward_logged[-1])
    before_ppo = next(m["eval_reward"] for m in metrics(tmp_path / "runs/ladder/ppo") if "eval_reward" in m)
    assert table["sft"]["reward_model"] == pytest.approx(before_ppo, abs=1e-4)
    sampled = [m["reward_mean"] for m in metrics(tmp_path / "runs/ladder/ppo") if "reward_mean" in m]
    assert len(sampled) == 4  # one a sampled batch: the first quarter is the first batch
    assert table["ppo"]["sampled_reward_first_quarter"] == pytest.approx(sampled[0])
    assert table["ppo"]["sampled_reward_last_quarter"] == pytest.approx(sampled[-1])

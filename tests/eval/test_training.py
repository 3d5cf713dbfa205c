"""Evaluation while training: a trainer's `eval_tasks:` run by the core loop at every evaluation.

A tiny `pretrain` run logs bits per byte of held-out text beside its loss (falling as it
learns) and writes eval.json, whose figures the saved model gives again through the task;
a tiny `sft` run logs the accuracy of a multiple-choice task on what it learns, well above
chance, and the exact match of what it generates.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")

import rung  # noqa: E402
from rung.evaluation import load_task  # noqa: E402
from rung.plugins import get_plugins  # noqa: E402

WORDS = ["alpha", "beta", "gamma", "delta", "sigma", "omega", "theta", "kappa"]


def module_text(i: int) -> str:
    """A small, regular Python module (every i different)."""
    parts = [f'"""Module {i}: helpers for {WORDS[i % len(WORDS)]}."""\n\nimport math\n']
    for j in range(4):
        name = f"{WORDS[(i + j) % len(WORDS)]}_{WORDS[(3 * i + j) % len(WORDS)]}_{j}"
        parts.append(f"def {name}(x, y={j}):\n    if x > {i + j}:\n        return x + y\n    return math.sqrt(x * y)\n")
    return "\n\n".join(parts)


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]


def test_pretrain_logs_bits_per_byte_of_held_out_text(tmp_path):
    pytest.importorskip("datatrove")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(16):
        (corpus / f"module_{i:02d}.py").write_text(module_text(i), encoding="utf-8")
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "heldout.py").write_text(module_text(40) + "\n\n" + module_text(41), encoding="utf-8")  # not trained on
    (tasks / "heldout.yaml").write_text("kind: perplexity\npaths: [heldout.py]\n", encoding="utf-8")
    run_dir = tmp_path / "run"
    rung.run(rung.make_config({
        "output_dir": str(run_dir),
        "seed": 0,
        "tokenizer": {"name": "bpe", "vocab_size": 320},
        "data": {"name": "corpus", "sources": [{"name": "files", "paths": [str(corpus)]}],
                 "clean": {"minhash": False, "quality": False},
                 "shards": {"dir": str(tmp_path / "shards"), "val_fraction": 0.2}, "workers": 1},
        "backend": {"name": "torch", "model": "test", "precision": "fp32", "device": "cpu"},
        "trainer": {"name": "pretrain", "steps": 30, "batch_size": 8, "seq_len": 32, "learning_rate": 1e-2,
                    "warmup_steps": 3, "log_every": 10, "eval_every": 10, "val_batches": 1, "sample_every": None,
                    "eval_tasks": [str(tasks / "heldout.yaml")]},
        "logging": {"sinks": [{"name": "jsonl"}]},
    }))

    logged = {r["step"]: r for r in records(run_dir) if "heldout/bits_per_byte" in r}
    assert sorted(logged) == [10, 20, 30]
    assert all("loss" in logged[s] and "val_loss" in logged[s] for s in logged)  # beside the trainer's own
    bpb = [logged[s]["heldout/bits_per_byte"] for s in (10, 20, 30)]
    assert bpb[2] < bpb[0], bpb  # it learns the held-out modules' style
    saved = json.loads((run_dir / "eval.json").read_text(encoding="utf-8"))
    assert set(saved) == {"heldout"}
    assert saved["heldout"] == pytest.approx({k.split("/", 1)[1]: v for k, v in logged[30].items()
                                              if k.startswith("heldout/")})
    assert saved["heldout"]["bytes"] == len((tasks / "heldout.py").read_bytes())

    # the saved model gives the same figures through the task outside training
    model = rung.backend("torch", model=str(run_dir / "model"), device="cpu", precision="fp32")
    again = load_task(get_plugins().registry, tasks / "heldout.yaml").evaluate(model)
    assert again == pytest.approx(saved["heldout"], rel=1e-5)


ANSWERS = ["apple", "bread", "cloud", "drum", "eagle", "flute", "grape", "honey"]
CHATML = "<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"  # what sft writes for the byte tokenizer


def test_sft_logs_multiple_choice_accuracy(tmp_path):
    pytest.importorskip("rung_lora")
    questions = [f"word {i}?" for i in range(len(ANSWERS))]
    chats = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
             for q, a in zip(questions, ANSWERS)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(c) + "\n" for c in chats), encoding="utf-8")
    rows = []
    for i, (question, answer) in enumerate(zip(questions, ANSWERS)):
        choices = [ANSWERS[(i + k) % len(ANSWERS)] for k in (3, 0, 5, 6)]  # the answer and three others
        choices = choices[i % 4:] + choices[:i % 4]  # the answer at every position in turn
        rows.append({"question": question, "choices": choices, "answer": answer})
    (tmp_path / "mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    spec = {"kind": "multiple_choice", "name": "words", "path": str(tmp_path / "mc.jsonl"), "template": CHATML,
            "choice_prefix": ""}
    (tmp_path / "gen.jsonl").write_text("".join(json.dumps({"question": q, "reference": a}) + "\n"
                                                for q, a in zip(questions, ANSWERS)), encoding="utf-8")
    generation = {"kind": "generation", "name": "answers", "path": str(tmp_path / "gen.jsonl"), "template": CHATML,
                  "stop": ["<|im_end|>"], "max_tokens": 16, "rewards": ["exact_match"]}
    run_dir = tmp_path / "run"
    rung.run(rung.make_config({
        "output_dir": str(run_dir),
        "seed": 0,
        "backend": {"name": "torch", "model": "test", "device": "cpu", "precision": "fp32"},
        "tokenizer": {"name": "byte"},
        "data": {"name": "chat_jsonl", "path": str(tmp_path / "train.jsonl")},
        "trainer": {"name": "sft", "steps": 160, "batch_size": 16, "learning_rate": 1e-2, "warmup_steps": 3,
                    "log_every": 80, "eval_every": 80, "resume": "never", "eval_tasks": [spec, generation]},
        "logging": {"sinks": [{"name": "jsonl"}]},
    }))

    logged = {r["step"]: r for r in records(run_dir) if "words/accuracy" in r}
    assert sorted(logged) == [80, 160]
    assert all(logged[s]["words/count"] == len(ANSWERS) for s in logged)
    final = logged[160]
    assert final["words/accuracy"] >= 0.75, final  # chance: 0.25
    assert final["answers/exact_match"] >= 0.5, final  # generated with the weights being trained
    assert logged[80]["answers/count"] == len(ANSWERS)
    assert json.loads((run_dir / "eval.json").read_text(encoding="utf-8"))["words"]["accuracy"] == \
        final["words/accuracy"]

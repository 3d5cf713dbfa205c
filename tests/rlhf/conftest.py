"""Shared fixtures of the rung-rlhf tests: a tiny tokenizer, a tiny torch model saved to disk,
and small preference files. Kept general so every rlhf test file can use them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def byte_tok():
    """rung's byte tokenizer with rung's own chat template (a plain one has none)."""
    import rung

    tokenizer = rung.tokenizer("byte")
    tokenizer.chat_template = "rung"
    return tokenizer


@pytest.fixture(scope="session")
def hf_tok(tmp_path_factory, byte_tok):
    """A real transformers tokenizer (with its own Jinja chat template), loaded from disk."""
    from transformers import AutoTokenizer

    from rung.transformers_tokenizer import as_rung_tokenizer

    folder = tmp_path_factory.mktemp("hf_tok")
    byte_tok.save(folder)
    return as_rung_tokenizer(AutoTokenizer.from_pretrained(str(folder)))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """rung's `test` preset (2 layers, dim 32) on the byte vocabulary, saved as a Llama checkpoint
    with its tokenizer: what `backend: {name: torch, model: <dir>}` and transformers both load."""
    pytest.importorskip("torch")
    import rung

    folder = tmp_path_factory.mktemp("tiny_model")
    tokenizer = rung.tokenizer("byte")
    backend = rung.backend("torch", tokenizer=tokenizer, model="test", device="cpu", precision="fp32",
                           architecture={"init_std": 0.3})
    backend.save(folder)
    return folder


def arithmetic_pairs(count: int, seed: int = 0) -> list[dict]:
    """{"prompt", "chosen", "rejected"}: the right sum against an off-by-one (a signal a tiny
    model learns slowly; tests that need an easy one use `separable_pairs`)."""
    import random

    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        a, b = rng.randrange(10, 50), rng.randrange(10, 50)
        rows.append({"prompt": f"{a}+{b}=", "chosen": str(a + b), "rejected": str(a + b + rng.choice([-1, 1]))})
    return rows


def separable_pairs(count: int, seed: int = 0) -> list[dict]:
    """Pairs a reward model separates by a surface feature: the chosen answer is a run of 'a's,
    the rejected one a run of 'z's, of random lengths, after random prompts."""
    import random

    rng = random.Random(seed)
    return [{"prompt": "say " + "".join(rng.choice("mnop") for _ in range(rng.randrange(2, 6))),
             "chosen": "a" * rng.randrange(2, 6), "rejected": "z" * rng.randrange(2, 6)} for _ in range(count)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def preference_files(tmp_path_factory) -> tuple[Path, Path]:
    """(train, held-out) preference JSONL files of arithmetic pairs."""
    folder = tmp_path_factory.mktemp("prefs")
    return (write_jsonl(folder / "train.jsonl", arithmetic_pairs(64, seed=0)),
            write_jsonl(folder / "eval.jsonl", arithmetic_pairs(16, seed=1)))

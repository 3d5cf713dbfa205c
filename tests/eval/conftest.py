"""Fixtures of the rung-eval tests: one tiny rung Llama saved as a transformers folder, backends on it.

The folder is what a user's trained model looks like: config.json (LlamaForCausalLM),
model.safetensors and a byte-level BPE tokenizer (rung's `bpe`, trained here) that transformers
loads, so rung's torch, hf and jax backends, lm-evaluation-harness's own `hf` model and
`rung serve` all read the same weights and the same token ids.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")

# Text the tokenizer learns its merges from, and that tasks are written in: scores of a random
# model over it differ from token to token, so a misaligned or missed token changes a sum.
CORPUS = [
    "the cat sat on the mat. the dog ran to the park while birds sang in the trees.",
    "def add(a, b):\n    return a + b\n\nprint(add(1, 2))\n",
    "Rain fell on the hills; rivers ran over stones, and the morning light came late.",
    "Les élèves étudient le français — naïve café, 日本語 😀 and  double  spaces.",
]
CONTEXT = 64  # the model's context: the tests' texts are longer, so rolling windows are several


def save_eval_model(directory: Path, preset: str = "test", context: int = CONTEXT, seed: int = 0) -> Path:
    """A randomly initialised rung Llama (`preset`, `context` tokens) with a trained byte-level
    BPE tokenizer, saved to `directory` as a transformers checkpoint; returns `directory`."""
    import rung

    tokenizer = rung.tokenizer("bpe", vocab_size=300)
    tokenizer.train(iter(CORPUS * 20))
    backend = rung.backend("torch", model=preset, tokenizer=tokenizer, device="cpu", precision="fp32", seed=seed,
                           architecture={"max_seq_len": context, "init_std": 0.3})
    backend.save(directory)
    tokenizer.save(directory)
    return directory


@pytest.fixture(scope="session")
def eval_model_dir(tmp_path_factory) -> Path:
    """The tiny model folder (rung torch Llama, byte-level BPE, context CONTEXT)."""
    return save_eval_model(tmp_path_factory.mktemp("eval-model") / "model")


_backends: dict = {}


@pytest.fixture
def eval_backend(eval_model_dir):
    """eval_backend(name): a `torch`, `hf` or `jax` backend on `eval_model_dir` (one per session)."""
    import rung

    def get(name: str):
        if name not in _backends:
            if name == "jax":
                pytest.importorskip("jax")
            # fp32 on every side: "auto" is bf16 autocast on a CPU with native bf16 (AMX, AVX512-BF16),
            # whose scores differ from the harness's fp32 ones by ~1e-4 to 1e-3
            options = {"device": "cpu", "precision": "fp32"}
            _backends[name] = rung.backend(name, model=str(eval_model_dir), **options)
        return _backends[name]

    return get

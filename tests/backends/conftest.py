"""Fixtures of the cross-backend tests: one tiny checkpoint on disk that every local backend
loads (rung-torch, rung-jax and rung-hf read the same safetensors and tokenizer files), with
and without a chat template, and backends built on them once per session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

WORDS = ("the cat sat on a mat and the dog ran to the park while birds sang songs of "
         "rain sun wind over hills rivers stones trees light dark morning evening night").split()
CONTEXT = 64  # the checkpoint's max_seq_len: small, so the context tests are cheap


def corpus() -> list[str]:
    import random

    rng = random.Random(0)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))) + "." for _ in range(300)]


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    """A model never trained on chat: BPE tokenizer learnt from text, no chat template."""
    import rung

    tokenizer = rung.tokenizer("bpe", vocab_size=320, min_frequency=1)
    tokenizer.train(corpus())
    assert tokenizer.chat_template is None
    backend = rung.backend("torch", model="test", tokenizer=tokenizer, device="cpu", seed=1,
                           architecture={"init_std": 0.3, "max_seq_len": CONTEXT})
    directory = tmp_path_factory.mktemp("plain-model")
    backend.save(directory)
    return directory


@pytest.fixture(scope="session")
def chat_checkpoint(checkpoint, tmp_path_factory) -> Path:
    """The same weights with a tokenizer that carries rung's chat template (what sft leaves)."""
    from rung_tokenizers import load_tokenizer

    directory = tmp_path_factory.mktemp("chat-model")
    for name in ("config.json", "model.safetensors"):
        shutil.copy(checkpoint / name, directory / name)
    tokenizer = load_tokenizer(checkpoint)
    tokenizer.chat_template = "rung"
    tokenizer.save(directory)
    return directory


@pytest.fixture(scope="session")
def transformers_checkpoint(checkpoint, tmp_path_factory) -> Path:
    """A transformers Llama as a user downloads one (written by save_pretrained, no rung files),
    whose tokenizer has no chat template: a base model."""
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    directory = tmp_path_factory.mktemp("transformers-model")
    LlamaForCausalLM.from_pretrained(str(checkpoint)).save_pretrained(str(directory))
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(checkpoint / "tokenizer.json"),
                                        eos_token="<|endoftext|>", pad_token="<|pad|>")
    tokenizer.save_pretrained(str(directory))
    return directory


LOCAL = ("torch", "jax", "hf")
_built: dict = {}


@pytest.fixture(scope="session")
def local_backend():
    """local_backend(name, directory): a backend of that name on the saved model (built once)."""
    import rung

    def get(name: str, directory: Path):
        key = (name, str(directory))
        if key not in _built:
            options = {"device": "cpu"} if name != "jax" else {}
            _built[key] = rung.backend(name, model=str(directory), max_tokens=16, **options)
        return _built[key]

    return get

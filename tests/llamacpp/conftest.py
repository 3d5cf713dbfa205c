"""Fixtures of the llamacpp tests: a tiny rung-torch model, trained a little and saved, that the
`llamacpp` backend loads from its folder (exported to GGUF and cached) or from the GGUF file.

Every test here needs llama-cpp-python (`bash scripts/ensure-llamacpp.sh` builds it); without
it the whole folder skips, saying so.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: bash scripts/ensure-llamacpp.sh "
                                        "(or pip install 'rung-llamacpp[llama-cpp]') builds it")
pytest.importorskip("torch")

# Text the tokenizer learns from and the model is trained on: a few steps on it make greedy
# answers that vary from prompt to prompt (a random model repeats one token).
LINES = [
    "the cat sat on the mat and the dog ran to the park.",
    "birds sang in the trees while rain fell on the hills.",
    "rivers ran over stones; the morning light came late.",
    "def add(a, b):\n    return a + b\n",
    "the king rode to the castle and the queen sang a song.",
    "Les élèves étudient le français — naïve café 😀.",
]
CONTEXT = 96
PROMPTS = ["the cat", "birds sang in", "def add(", "the queen", "rivers ran", "Les él", "x", "the king rode to the"]


def train_model(directory: Path, steps: int = 60, seed: int = 0, chat_template: str | None = "rung") -> Path:
    """A rung-torch model (dim 32, 2 layers) on a byte-level BPE tokenizer with rung's chat template,
    trained `steps` steps of next-token loss on LINES, saved to `directory`."""
    import torch

    import rung

    tokenizer = rung.tokenizer("bpe", vocab_size=300, min_frequency=1, chat_template=chat_template)
    tokenizer.train(LINES * 10)
    backend = rung.backend("torch", model="test", tokenizer=tokenizer, device="cpu", precision="fp32", seed=seed,
                           architecture={"dim": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2,
                                         "max_seq_len": CONTEXT})
    model = backend.model
    ids = torch.tensor([i for line in LINES * 4 for i in tokenizer.encode(line + "\n")])
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        starts = torch.randint(0, len(ids) - 33, (8,), generator=generator)
        batch = torch.stack([ids[s:s + 33] for s in starts])
        logits = model(batch[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    backend.save(directory)
    return directory


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    """The trained tiny model's folder (rung's files: config.json, model.safetensors, tokenizer)."""
    return train_model(tmp_path_factory.mktemp("llamacpp") / "tiny")


@pytest.fixture(scope="session")
def torch_backend(model_dir):
    import rung

    return rung.backend("torch", model=str(model_dir), device="cpu", precision="fp32")


@pytest.fixture(scope="session")
def folder_backend(model_dir):
    """`llamacpp` on the folder: exported once (f32), rung's tokenizer."""
    import rung

    backend = rung.backend("llamacpp", model=str(model_dir))
    yield backend
    backend.close()


@pytest.fixture(scope="session")
def gguf_backend(folder_backend):
    """`llamacpp` on the GGUF file alone: llama.cpp's tokenizer and the file's chat template."""
    import rung

    backend = rung.backend("llamacpp", model=str(folder_backend.gguf_path))
    yield backend
    backend.close()

"""rung-torch's block-wise shared-prompt attention (GRPO's rows of a prompt and its G completions)
gives the log-probabilities and gradients of the dense mask, on rung's own model."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

import rung
from rung.objectives import IGNORE_INDEX
from rung_rlhf.packing import pack_shared
from rung_torch import objectives
from rung_torch.shared_attention import SharedPromptAttention


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    backend = rung.backend("torch", model="test", device="cpu", precision="fp32", tokenizer=rung.tokenizer("byte"),
                           architecture={"max_seq_len": 256})
    return backend.model.train()


def packed_batch(seed: int, per_row: int = 4, length: int = 12) -> dict[str, np.ndarray]:
    rng = random.Random(seed)
    prompts = [[rng.randint(1, 250) for _ in range(rng.randint(1, 9))] for _ in range(3)]
    completions = [[[rng.randint(1, 250) for _ in range(rng.randint(1, length))] for _ in range(per_row)]
                   for _ in range(3)]
    completions[1] = completions[1][:2]  # a row with fewer completions
    return pack_shared(prompts, completions, 9 + per_row * length + 5, 0).batch()  # 5 columns of padding past all


def logprobs_and_grads(model, batch, dense: bool, monkeypatch):
    if dense:
        monkeypatch.setattr(SharedPromptAttention, "of", classmethod(lambda cls, seg: None))
    model.zero_grad()
    logp, _ = objectives.token_logprobs(model, batch)
    weights = torch.from_numpy(np.random.default_rng(1).normal(size=logp.shape).astype(np.float32))
    (logp * weights).sum().backward()
    monkeypatch.undo()
    return logp.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_blockwise_attention_equals_the_dense_mask(model, seed, monkeypatch):
    batch = packed_batch(seed)
    assert SharedPromptAttention.of(torch.from_numpy(batch["segment_ids"])) is not None
    dense, dense_grads = logprobs_and_grads(model, batch, True, monkeypatch)
    blockwise, grads = logprobs_and_grads(model, batch, False, monkeypatch)
    assert blockwise.shape == (3, batch["input_ids"].shape[1] - 1)
    completion = torch.from_numpy(batch["labels"][:, 1:] != IGNORE_INDEX)
    assert bool((dense[completion] != 0).all())
    torch.testing.assert_close(blockwise, dense, rtol=0, atol=2e-5)
    for got, want in zip(grads, dense_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_padding_past_every_row_predicts_nothing(model):
    batch = packed_batch(0)
    used = int((batch["segment_ids"] >= 0).any(0).sum())
    with torch.no_grad():
        logp, _ = objectives.token_logprobs(model, batch)
        alone, _ = objectives.token_logprobs(model, {k: v[:, :used] for k, v in batch.items()})
    assert logp.shape[1] == batch["input_ids"].shape[1] - 1 > used
    assert bool((logp[:, used - 1:] == 0).all())
    torch.testing.assert_close(logp[:, :used - 1], alone, rtol=0, atol=0)


def test_rows_of_another_layout_keep_the_dense_mask():
    seg = torch.tensor([[0, 0, 1, 1, 2, 1, -1]])  # completion 1 in two pieces
    assert SharedPromptAttention.of(seg) is None
    assert SharedPromptAttention.of(torch.tensor([[1, 0, 0, 2, -1]])) is None  # the prompt not first
    assert SharedPromptAttention.of(torch.tensor([[0, 0, 1, 1, 2, -1]])) is not None

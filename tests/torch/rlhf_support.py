"""What the RLHF-primitive tests of the torch and hf backends share: shared-prompt batches and
their separate equivalents, non-zero LoRA weights, a few real engine steps, a rollout stream.

Imported as `tests.torch.rlhf_support` by tests/torch and tests/hf.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from rung.objectives import IGNORE_INDEX

# Two rows, each one prompt shared by completions of different lengths (padding after them).
SHARED_ROWS = [
    ([5, 17, 33, 8, 41, 12], [[9, 14, 22], [30, 7, 7, 19, 2]]),
    ([3, 28, 11], [[40, 6], [13, 25, 4, 18], [21]]),
]


def packed_batch(rows=SHARED_ROWS, pad: int = 0) -> dict[str, np.ndarray]:
    """input_ids, segment_ids (0 prompt, k completion k, -1 padding) and labels (the
    completions' tokens; -100 elsewhere), right-padded to the longest row."""
    width = max(len(p) + sum(len(c) for c in cs) for p, cs in rows) + 2
    ids = np.full((len(rows), width), pad, np.int64)
    seg = np.full((len(rows), width), -1, np.int64)
    labels = np.full((len(rows), width), IGNORE_INDEX, np.int64)
    for r, (prompt, completions) in enumerate(rows):
        ids[r, :len(prompt)], seg[r, :len(prompt)] = prompt, 0
        at = len(prompt)
        for k, completion in enumerate(completions, start=1):
            span = slice(at, at + len(completion))
            ids[r, span], seg[r, span], labels[r, span] = completion, k, completion
            at += len(completion)
    return {"input_ids": ids, "segment_ids": seg, "labels": labels}


def separate_batch(prompt, completion) -> dict[str, np.ndarray]:
    ids = np.array([list(prompt) + list(completion)], np.int64)
    labels = np.array([[IGNORE_INDEX] * len(prompt) + list(completion)], np.int64)
    return {"input_ids": ids, "labels": labels}


def check_shared_equals_separate(model: Any, rows=SHARED_ROWS, atol: float = 1e-5) -> int:
    """token_logprobs, token_scores and logprobs_and_scores of the packed rows equal those of
    each prompt + completion run alone (the prompt's scores too); returns how many values
    were compared. `logprobs_and_scores` equals the two objectives it fuses."""
    from rung_torch.objectives import logprobs_and_scores, token_logprobs, token_scores

    batch = packed_batch(rows)
    with torch.no_grad():
        shared_lp = token_logprobs(model, batch)[0]
        shared_scores = token_scores(model, batch)[0]
        (fused_lp, fused_scores), _ = logprobs_and_scores(model, batch)
    assert shared_lp.shape == (len(rows), batch["input_ids"].shape[1] - 1)
    assert shared_scores.shape == batch["input_ids"].shape and shared_scores.dtype == torch.float32
    torch.testing.assert_close(fused_lp, shared_lp, atol=atol, rtol=0)
    torch.testing.assert_close(fused_scores, shared_scores, atol=atol, rtol=0)
    compared = 0
    for r, (prompt, completions) in enumerate(rows):
        at = len(prompt)
        for completion in completions:
            alone = separate_batch(prompt, completion)
            with torch.no_grad():
                lp = token_logprobs(model, alone)[0][0]
                scores = token_scores(model, alone)[0][0]
            n, p = len(completion), len(prompt)
            torch.testing.assert_close(shared_lp[r, at - 1:at - 1 + n], lp[p - 1:p - 1 + n], atol=atol, rtol=0)
            torch.testing.assert_close(shared_scores[r, at:at + n], scores[p:p + n], atol=atol, rtol=0)
            torch.testing.assert_close(shared_scores[r, :p], scores[:p], atol=atol, rtol=0)
            assert bool((lp[p - 1:] != 0).all())  # every completion token is predicted
            compared += 2 * n
            at += n
        assert bool((shared_lp[r, :len(prompt) - 1] == 0).all())  # prompt tokens are not predicted
    return compared


def randomize_lora(model: torch.nn.Module, seed: int = 0, std: float = 0.3) -> int:
    """Non-zero LoRA B matrices (peft starts them at zero), so adapters change the outputs."""
    generator = torch.Generator().manual_seed(seed)
    changed = 0
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
                changed += 1
    assert changed, "the model has no LoRA B matrices"
    return changed


def train(backend: Any, output_dir, stream, steps: int = 2, learning_rate: float = 0.05):
    """`steps` real optimizer steps of next-token loss on `stream`, through the backend's engine."""
    from rung_torch.objectives import next_token_loss
    from tests.torch.engine_support import make_run, training_options

    options = training_options(steps=steps, learning_rate=learning_rate, warmup_steps=0, grad_clip=None,
                               batch_size=len(stream.prompts) if hasattr(stream, "prompts") else 4)
    return backend.engine().fit(next_token_loss, stream, options, make_run(output_dir))


class GreedyRollouts:
    """A `rung.interfaces.RolloutStream`: each batch is `prompts` and their greedy completions
    from the policy being trained (`sample_tokens` in the engine's evaluation context), beside
    those of a fresh copy of the same weights, which has no cached decoding state."""

    def __init__(self, prompts: list[list[int]], stop_ids=(), max_tokens: int = 8, width: int = 24) -> None:
        self.prompts, self.stop_ids, self.max_tokens, self.width = prompts, frozenset(stop_ids), max_tokens, width
        self.samples: list[list[list[int]]] = []
        self.fresh: list[list[list[int]]] = []

    def next_from(self, policy: Any) -> dict[str, np.ndarray]:
        from rung.decoding import Sampling
        from rung_torch.backend import frozen_copy
        from rung_torch.sampling import sample_tokens

        sampling = Sampling(max_tokens=self.max_tokens, stop_ids=self.stop_ids)
        self.samples.append(sample_tokens(policy, self.prompts, sampling))
        self.fresh.append(sample_tokens(frozen_copy(policy), self.prompts, sampling))
        ids = np.zeros((len(self.prompts), self.width), np.int64)
        for row, (prompt, completion) in enumerate(zip(self.prompts, self.samples[-1])):
            tokens = (prompt + completion)[:self.width]
            ids[row, :len(tokens)] = tokens
        return {"input_ids": ids}

    def state_dict(self) -> dict[str, Any]:
        return {"batches": len(self.samples)}

    def load_state_dict(self, state) -> None:
        pass

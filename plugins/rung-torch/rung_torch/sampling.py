"""`sample_tokens`: many prompts sampled at once, as token ids (online RL: GRPO, PPO).

`sample_tokens(model, prompts, sampling) -> list[list[int]]`, each prompt's new ids, a stop id
kept as the last one when one was sampled, at most `sampling.max_tokens`. The loop calls it
inside the engine's evaluation context with the model being trained (`RolloutStream`).

- rung's `Transformer` (peft-wrapped too): `rung_torch.generate.generate_tokens`, the
  backend's own batched KV-cache decoder (left-padded rows, each decoded as it would be
  alone, the flat fast forward when the layers are plain), with each row's ids collected
  instead of text. Row i draws from its own generator seeded `sampling.seed + i`, so row i
  equals `backend.generate` of prompt i with that seed. The fast forward's weight copies are
  rebuilt after each optimizer step (the engine calls `modeling.weights_changed`).
- a transformers model (peft-wrapped too): its own `generate` (its KV cache) on one
  left-padded batch, each next token picked by rung's rule (`generate.choose`, through a
  logits processor) from row i's generator seeded `sampling.seed + i`: the policy's own
  distribution (temperature, top-k, top-p only; none of the checkpoint's
  generation_config.json extras such as a repetition penalty), reproducible, and the global
  RNG left alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch

from rung.decoding import Sampling
from rung.errors import RungError
from rung_torch.modeling import unwrap
from rung_torch.scoring import is_rung_model, score_owner


class TokenRow:
    """What `generate_tokens` hands one row's tokens to when only the ids are wanted (the
    part of `rung.decoding.RowDecoder` it calls): every id kept, a stop id last."""

    def __init__(self, sampling: Sampling) -> None:
        self.sampling = sampling
        self.ids: list[int] = []
        self.finish_reason: str | None = None

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def take_logprobs(self) -> None:
        return None  # ids only: no log-probabilities are asked for or kept

    def push(self, token: int, logprob: Any = None) -> str:
        self.ids.append(token)
        if token in self.sampling.stop_ids:
            self.finish_reason = "stop"
        elif len(self.ids) >= self.sampling.max_tokens:
            self.finish_reason = "length"
        return ""

    def finish(self, reason: str) -> str:
        if self.finish_reason is None:
            self.finish_reason = reason
        return ""


def sample_tokens(model: Any, prompts: Sequence[Sequence[int]], sampling: Sampling) -> list[list[int]]:
    """New token ids of every prompt, sampled together (see the module's docstring)."""
    prompts = [list(map(int, p)) for p in prompts]
    if not prompts:
        return []
    if any(not p for p in prompts):
        raise RungError("sample_tokens: a prompt has no tokens")
    if sampling.max_tokens < 1:
        raise RungError(f"sample_tokens: max_tokens must be at least 1, got {sampling.max_tokens}")
    owner = score_owner(model)
    if is_rung_model(owner):
        return _sample_rung(owner, prompts, sampling)
    return _sample_transformers(unwrap(model), owner, prompts, sampling)


def row_samplings(sampling: Sampling, rows: int) -> list[Sampling]:
    """Row i's Sampling: seeded `sampling.seed + i` (unseeded rows stay unseeded)."""
    if sampling.seed is None or sampling.greedy:
        return [sampling] * rows
    return [dataclasses.replace(sampling, seed=sampling.seed + i) for i in range(rows)]


def decode_dtype(device: torch.device) -> torch.dtype:
    """What the backend decodes in by default: fp32 on the CPU (see `device.resolve_precision`),
    on a GPU the autocast dtype the engine evaluates in, else bf16 where supported."""
    from rung_torch.device import DTYPES, resolve_precision

    if device.type != "cpu" and torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return DTYPES[resolve_precision("auto", device, "decode")]


def _sample_rung(model: Any, prompts: list[list[int]], sampling: Sampling) -> list[list[int]]:
    from rung_torch.generate import generate_tokens

    device = next(model.parameters()).device
    rows = row_samplings(sampling, len(prompts))
    collected = [TokenRow(row) for row in rows]
    was_training = model.training
    model.eval()
    try:
        for _ in generate_tokens(model, prompts, rows, collected, device, decode_dtype(device)):
            pass
    finally:
        model.train(was_training)
    return [row.ids for row in collected]


def _sample_transformers(model: Any, owner: Any, prompts: list[list[int]], sampling: Sampling) -> list[list[int]]:
    from transformers import GenerationConfig, LogitsProcessorList

    device = next(owner.parameters()).device
    stops = sorted(int(i) for i in sampling.stop_ids)
    pad = _pad_id(owner, stops)
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.tensor(prompt)
        mask[row, width - len(prompt):] = 1
    # generate "decodes greedily" over what RowChooser leaves: one token per row, picked by
    # rung's own rule; every other field set, or generate takes the checkpoint's.
    config = GenerationConfig(
        max_new_tokens=sampling.max_tokens, min_new_tokens=0, num_beams=1, num_return_sequences=1,
        do_sample=False, temperature=1.0, top_k=50, top_p=1.0, min_p=None, typical_p=1.0, repetition_penalty=1.0,
        no_repeat_ngram_size=0, pad_token_id=pad, eos_token_id=stops,  # [] : no id stops a row
    )
    # Greedy is generate's own argmax; sampling picks through rung's chooser.
    processors = [] if sampling.greedy else [RowChooser(row_samplings(sampling, len(prompts)), device)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config,
                                 logits_processor=LogitsProcessorList(processors))
    finally:
        model.train(was_training)
    rows = []
    for tokens in out[:, width:].tolist():
        tokens = tokens[:sampling.max_tokens]
        ends = [i for i, token in enumerate(tokens) if token in sampling.stop_ids]
        rows.append(tokens[:ends[0] + 1] if ends else tokens)
    return rows


class RowChooser:
    """A transformers logits processor that picks each row's next token as rung's decoder does
    (`generate.choose`: greedy, or temperature / top-k / top-p from the row's own generator)
    and leaves only that token possible, so greedy `generate` emits it."""

    def __init__(self, rows: Sequence[Sampling], device: torch.device) -> None:
        self.rows = list(rows)
        self.generators: list[torch.Generator | None] = []
        for row in self.rows:
            if row.greedy:
                self.generators.append(None)
                continue
            generator = torch.Generator(device=device)
            generator.manual_seed(row.seed) if row.seed is not None else generator.seed()
            self.generators.append(generator)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        from rung_torch.generate import choose

        chosen = choose(scores, self.rows, self.generators)
        only = torch.full_like(scores, float("-inf"))
        return only.scatter_(1, chosen[:, None], 0.0)


def _pad_id(model: Any, stops: list[int]) -> int:
    """An id for the padding of left-padded prompts (masked out: any id will do)."""
    for config in (getattr(model, "generation_config", None), getattr(model, "config", None)):
        pad = getattr(config, "pad_token_id", None)
        if isinstance(pad, int):
            return pad
    return stops[0] if stops else 0

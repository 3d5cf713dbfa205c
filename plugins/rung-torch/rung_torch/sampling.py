"""`sample_tokens`: many prompts sampled at once, as token ids (online RL: GRPO, PPO).

`sample_tokens(model, prompts, sampling) -> list[list[int]]`, each prompt's new ids, a stop id
kept as the last one when one was sampled, at most `sampling.max_tokens`. The loop calls it
inside the engine's evaluation context with the model being trained (`RolloutStream`).

- rung's `Transformer` (peft-wrapped too): the algorithm of `rung_torch.generate.generate_tokens`,
  the backend's own batched KV-cache decoder (left-padded rows, each decoded as it would be
  alone, the flat fast forward when the layers are plain, `picking.choose`'s rule), for ids
  only: each distinct prompt prefilled once and its cache rows copied to its repeats (GRPO
  passes each prompt G times), no per-row decoder, tokens kept in tensors until the end.
  Row i draws from its own generator seeded `sampling.seed + i`, so row i equals
  `backend.generate` of prompt i with that seed. The fast forward's weight copies are
  rebuilt after each optimizer step (the engine calls `modeling.weights_changed`).
- a transformers Llama-style model that is exactly rung's network (`rung_torch.transformers_view`:
  plain projections, no biases, no adapters): the same decoder, on a `Transformer` that holds
  the transformers model's own parameters. The tokens are those rung's model with these weights
  samples; they differ from `generate`'s only where float rounding in another order flips a pick.
- another transformers model (peft-wrapped too): its own `generate` (its KV cache) on one
  left-padded batch, each next token picked by rung's rule (`picking.choose`, through a
  logits processor) from row i's generator seeded `sampling.seed + i`: the policy's own
  distribution (temperature, top-k, top-p, min-p only; a repetition penalty is refused, and
  none of the checkpoint's generation_config.json extras apply), reproducible, and the global
  RNG left alone. rung's own models honour a repetition penalty (`choose`'s `seen`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch

from rung.decoding import Sampling
from rung.errors import RungError
from rung_torch.modeling import eval_mode, unwrap
from rung_torch.scoring import is_rung_model, score_owner
from rung_torch.transformers_view import view


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
    if sampling.penalizes:
        raise RungError("sample_tokens: a repetition penalty is applied to rung's own models only; "
                        "for a transformers model leave repetition_penalty at 1")
    same_network = view(owner) if unwrap(model) is owner else None
    if same_network is not None:
        return _sample_rung(same_network, prompts, sampling)
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
    with eval_mode(model):
        return _decode_ids(model, prompts, sampling)


def _decode_ids(model: Any, prompts: list[list[int]], sampling: Sampling) -> list[list[int]]:
    """`generate_tokens`' algorithm (left-padded rows in one static KV cache, each decoded as it
    would be alone, `choose`'s rule from row i's generator) specialised to ids only.

    What it saves: each distinct prompt is prefilled once and its cache rows copied to its
    repeats (GRPO passes every prompt G times); a CPU row's uniform numbers are drawn for every
    step at once (a CPU generator's n draws in one call are its n single draws: the same ids);
    tokens and stops stay in tensors until the end, one inference-mode context for the loop.
    """
    from rung_torch.generate import FastForward, computing, context_error, forward_for
    from rung_torch.picking import choose, seen_tokens
    from rung_torch.model import KVCache

    device = next(model.parameters()).device
    dtype = decode_dtype(device)
    config = model.config
    context, steps = config.max_seq_len, sampling.max_tokens
    for prompt in prompts:
        if len(prompt) + steps > context:
            raise context_error(len(prompt), steps, context)
    distinct: dict[tuple[int, ...], int] = {}
    source = [distinct.setdefault(tuple(prompt), len(distinct)) for prompt in prompts]
    unique = [list(prompt) for prompt in distinct]
    B, D, T = len(prompts), len(unique), max(len(p) for p in prompts)
    pads = [T - len(p) for p in prompts]
    # Cache slots: a left-padded row may run past `context` slots, as its positions start later
    # (every row ends at `steps` tokens: prompt + steps fits the context, checked above).
    total = T + steps
    rows = row_samplings(sampling, B)
    alike = [sampling] * B  # what `choose` reads of a row (its filter) is the same in every row
    n_params = sum(p.numel() for p in model.parameters())

    positions = valid = prefill_positions = prefill_mask = None
    if any(pads):
        slots = torch.arange(total, device=device)
        pad_rows = torch.tensor(pads, device=device)
        valid = slots[None, :] >= pad_rows[:, None]  # (B, total): which cache slots hold real tokens
        positions = (slots[None, :] - pad_rows[:, None]).clamp(0, context - 1)
        first = torch.tensor([source.index(d) for d in range(D)], device=device)  # a row of each prompt
        prefill_positions = positions[first, :T]
        prefill_mask = model._mask(valid[first, :T], T, 0)
    ids = torch.tensor([[0] * (T - len(p)) + p for p in unique], dtype=torch.long, device=device)

    generators: list[torch.Generator | None] = []
    uniforms = None
    if not sampling.greedy:
        for row in rows:
            generator = torch.Generator(device=device)
            generator.manual_seed(row.seed) if row.seed is not None else generator.seed()
            generators.append(generator)
        if device.type == "cpu":
            uniforms = torch.stack([torch.rand(steps, generator=g) for g in generators], dim=1)  # (steps, B)

    with computing(device, n_params * D * T):
        forward = forward_for(model, dtype)
        cache = KVCache.allocate(config, B, total, device, dtype)
        if D == B:
            logits = forward(ids, cache, 0, prefill_positions, prefill_mask)
        else:
            prefilled = KVCache.allocate(config, D, T, device, dtype)
            logits = forward(ids, prefilled, 0, prefill_positions, prefill_mask)
            copies = torch.tensor(source, device=device)
            cache.k[:, :, :, :T] = prefilled.k.index_select(1, copies)
            cache.v[:, :, :, :T] = prefilled.v.index_select(1, copies)
            logits = logits.index_select(0, copies)

    step_mask = None
    if valid is not None:
        step_mask = valid[:, None, None, :]
        if isinstance(forward, FastForward):
            # Attention turns a bool mask into this additive one on every call (the same numbers):
            # made once here instead of once per layer and step.
            step_mask = torch.zeros(step_mask.shape, dtype=dtype, device=device).masked_fill_(~step_mask, float("-inf"))
    out = torch.empty((steps, B), dtype=torch.long, device=device)
    stop_ids = torch.tensor(sorted(int(i) for i in sampling.stop_ids), dtype=torch.long, device=device)
    stopped = torch.zeros(B, dtype=torch.bool, device=device)
    seen = seen_tokens(prompts, alike, config.vocab_size, device)  # None: no repetition penalty
    with computing(device, n_params * B):
        for step in range(steps):
            tokens = choose(logits, alike, generators, None if uniforms is None else uniforms[step], seen=seen)
            out[step] = tokens
            if step + 1 == steps:
                break
            if len(stop_ids):
                stopped |= torch.isin(tokens, stop_ids)
                if bool(stopped.all()):
                    break
            pos = T + step
            if step_mask is None:
                logits = forward.step(tokens, cache, pos)
            else:
                logits = forward.step(tokens, cache, pos, positions[:, pos], step_mask[..., :pos + 1])
        taken = out[:step + 1].t().tolist()
    return [_through_stop(row, sampling.stop_ids) for row in taken]


def _through_stop(tokens: list[int], stop_ids: frozenset[int] | set[int]) -> list[int]:
    """`tokens` up to and with the first stop id."""
    for i, token in enumerate(tokens):
        if token in stop_ids:
            return tokens[:i + 1]
    return tokens


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
    with eval_mode(model), torch.no_grad():
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config,
                             logits_processor=LogitsProcessorList(processors))
    rows = []
    for tokens in out[:, width:].tolist():
        tokens = tokens[:sampling.max_tokens]
        ends = [i for i, token in enumerate(tokens) if token in sampling.stop_ids]
        rows.append(tokens[:ends[0] + 1] if ends else tokens)
    return rows


class RowChooser:
    """A transformers logits processor that picks each row's next token as rung's decoder does
    (`picking.choose`: greedy, or temperature / top-k / top-p from the row's own generator)
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
        from rung_torch.picking import choose

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

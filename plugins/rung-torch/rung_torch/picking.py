"""How the torch decoders pick each next token from a step's logits (batch, vocab).

`choose`: greedy, or temperature / top-k / top-p / min-p, each row from its own seeded
generator, as it would pick alone; with `seen` (`seen_tokens`: the ids of each row's prompt and
reply so far) a row's repetition penalty first (CTRL's rule, as transformers'
RepetitionPenaltyLogitsProcessor), and the picks are added to `seen`. `constrain`: the masks of
each row's guide (structured output's `TokenGuide`, token healing's `HealingGuide`).
`ConstrainedLogits`: the same masks as a transformers logits processor (rung-hf's `generate`).
Every torch decoder calls these: `generate_tokens`, continuous batching (`batching`) and the RL
sampler (`sampling`).
"""

from __future__ import annotations

from collections.abc import Sequence

import math

import torch

from rung.decoding import Sampling
from rung.decoding.structured import TokenGuide


def seen_tokens(prompts: Sequence[Sequence[int]], rows: Sequence[Sampling], width: int,
                device: torch.device) -> torch.Tensor | None:
    """(batch, width) bool: which ids each prompt holds, what `choose` penalizes and adds its
    picks to; None when no row has a repetition penalty (no extra work at all)."""
    if not any(r.penalizes for r in rows):
        return None
    seen = torch.zeros((len(prompts), width), dtype=torch.bool, device=device)
    for i, prompt in enumerate(prompts):
        seen_prompt(seen[i], prompt)
    return seen


def seen_prompt(row: torch.Tensor, prompt: Sequence[int]) -> None:
    """Set one row of a `seen_tokens` tensor to the ids of `prompt` alone."""
    row.zero_()
    if prompt:
        row[torch.tensor(list(prompt), dtype=torch.long, device=row.device)] = True


def penalize(logits: torch.Tensor, rows: Sequence[Sampling], seen: torch.Tensor) -> torch.Tensor:
    """`logits` (batch, vocab) with each seen id's logit divided by the row's repetition penalty
    where positive and multiplied where negative (a float copy; rows without a penalty as they
    were)."""
    penalties = [r.repetition_penalty for r in rows]
    scores = logits.float()
    penalty = torch.tensor(penalties, dtype=scores.dtype, device=scores.device)[:, None]
    hit = torch.where(scores > 0, scores / penalty, scores * penalty)
    return torch.where(seen, hit, scores)


def choose(logits: torch.Tensor, rows: Sequence[Sampling],
           generators: Sequence[torch.Generator | None], uniforms: torch.Tensor | None = None,
           seen: torch.Tensor | None = None) -> torch.Tensor:
    """The next token of each row from its last logits (batch, vocab).

    `seen` (batch, vocab) bool (`seen_tokens`): rows with a repetition penalty are penalized
    first (greedy rows too), and every row's pick is marked seen afterwards.

    Rows that sample alike are filtered together (temperature, top-k, top-p as one batch of
    ops: online RL samples many rows at once). Each row then draws one uniform number from its
    own generator and takes the token where it falls in the row's cumulative distribution, so a
    row picks what it would pick alone (and `torch.multinomial`'s per-row cost, an exponential
    draw for every token of the vocabulary, is not paid once per row).

    `uniforms` (batch,): each row's number drawn already (a caller that drew many steps' worth
    at once); the generators are then not used.

    min_p (after temperature, top-k and top-p, as transformers orders them): keep the tokens
    at least min_p times as likely as the most likely one, i.e. whose scaled logit is within
    log(min_p) of the largest.
    """
    if seen is not None and any(r.penalizes for r in rows):
        logits = penalize(logits, rows, seen)
    chosen = _pick(logits, rows, generators, uniforms)
    if seen is not None:
        seen[torch.arange(len(rows), device=seen.device), chosen.to(seen.device)] = True
    return chosen


def _pick(logits: torch.Tensor, rows: Sequence[Sampling],
          generators: Sequence[torch.Generator | None], uniforms: torch.Tensor | None) -> torch.Tensor:
    """`choose` without the repetition penalty."""
    # max's indices: argmax's (the first of equal largest), at half its cost on a CPU
    chosen = logits.max(dim=-1).indices
    groups: dict[tuple, list[int]] = {}
    for i, sampling in enumerate(rows):
        if not sampling.greedy:
            groups.setdefault((sampling.temperature, sampling.top_k, sampling.top_p, sampling.min_p), []).append(i)
    for (temperature, top_k, top_p, min_p), members in groups.items():
        scores = (logits[members] if len(members) < len(rows) else logits).float()
        if temperature != 1.0:  # x / 1 is x: no copy of the logits for the most common temperature
            scores = scores / temperature
        if top_k is not None and top_k < scores.shape[-1]:
            kth = torch.topk(scores, top_k, dim=-1).values[:, -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if top_p is not None and top_p < 1.0:
            sorted_scores, order = torch.sort(scores, dim=-1, descending=True)
            sorted_probs = sorted_scores.softmax(-1)
            # Keep the smallest set whose probability reaches top_p (the first token always).
            drop = sorted_probs.cumsum(-1) - sorted_probs >= top_p
            scores = scores.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
        if min_p:
            floor = scores.amax(dim=-1, keepdim=True) + math.log(min_p)
            scores = scores.masked_fill(scores < floor, float("-inf"))
        cumulative = scores.softmax(-1).cumsum(-1)
        everyone = len(members) == len(rows)
        if uniforms is not None:
            uniform = uniforms if everyone else uniforms[torch.tensor(members, device=uniforms.device)]
            uniform = uniform.to(cumulative.device)
        else:
            uniform = torch.cat([torch.rand(1, generator=generators[i], device=generators[i].device)
                                 for i in members]).to(cumulative.device)
        # u in [0, total): the first token whose cumulative probability exceeds it (never one of
        # probability 0: the sum does not grow there).
        picked = torch.searchsorted(cumulative, (uniform * cumulative[:, -1])[:, None], right=True)[:, 0]
        picked = picked.clamp_(max=scores.shape[-1] - 1)
        if everyone:
            return picked
        chosen[torch.tensor(members, device=chosen.device)] = picked
    return chosen


def constrain(logits: torch.Tensor, guides: Sequence[TokenGuide | None], done: Sequence[bool]) -> torch.Tensor:
    """`logits` (batch, vocab) with every id a row's guide does not allow at -inf (a copy; the
    same tensor when no row is constrained now). Each (state, budget) has its ids tensor cached
    on the constraint, so a step costs a lookup and one index per constrained row."""
    masked = None
    for i, guide in enumerate(guides):
        if guide is None or done[i] or guide.failed:
            continue
        key, ids = guide.allowed()
        if not ids:
            continue
        index = guide.constraint.cache.get((key, logits.device))
        if index is None:
            index = guide.constraint.cache[(key, logits.device)] = torch.tensor(ids, dtype=torch.long,
                                                                                device=logits.device)
        if masked is None:
            masked = logits.clone()
        row = torch.full_like(masked[i], float("-inf"))
        row[index] = logits[i, index]
        masked[i] = row
    return logits if masked is None else masked


class ConstrainedLogits:
    """A transformers logits processor applying each row's guide (`constrain`): it advances
    the guides by the tokens `generate` chose since its last call. A row past a stop id is
    left alone (transformers pads it)."""

    def __init__(self, guides: Sequence[TokenGuide | None], width: int) -> None:
        self.guides, self.width = list(guides), width
        self.seen = 0
        self.ended = [False] * len(self.guides)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        new = input_ids[:, self.width + self.seen:].tolist()
        self.seen += len(new[0]) if new else 0
        for i, tokens in enumerate(new):
            guide = self.guides[i]
            for token in tokens:
                if guide is None or self.ended[i]:
                    break
                self.ended[i] = token in guide.stop_ids
                guide.advance(token)
        return constrain(scores, self.guides, self.ended)

"""How the llamacpp backend picks each next token from llama.cpp's logits, in numpy.

llama.cpp computes the logits; rung picks from them, by the same rule as rung-torch's
`choose` (greedy: the argmax, so greedy tokens equal rung-torch's on the same f32 weights;
else temperature, top-k, top-p, then one uniform draw from the row's own seeded generator
placed in the cumulative distribution). Picking here rather than in llama.cpp's sampler chain
keeps one meaning of every setting across rung's local backends, and gives log-probabilities
(the model's own distribution, before temperature) and structured output's (and token
healing's) masks for free. A repetition penalty comes first (CTRL's rule: a seen id's logit
divided by the penalty where positive, multiplied where negative; greedy rows too), min-p
last (after temperature, top-k and top-p, as transformers orders them).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from rung.decoding import LogprobRecords, Sampling
from rung.records import TokenLogprob


def generator_for(sampling: Sampling, default_seed: int | None) -> np.random.Generator | None:
    """The row's random numbers (None for greedy): its seed, the backend's, or fresh entropy."""
    if sampling.greedy:
        return None
    seed = sampling.seed if sampling.seed is not None else default_seed
    return np.random.default_rng(seed)


def seen_tokens(prompt: Sequence[int], sampling: Sampling, width: int) -> np.ndarray | None:
    """(width,) bool: the ids the prompt holds, what a repetition penalty applies to (and the
    loop adds each pick to); None when the row has no penalty."""
    if not sampling.penalizes:
        return None
    seen = np.zeros(width, dtype=bool)
    seen[np.asarray(list(prompt), dtype=np.int64)] = True
    return seen


def choose(logits: np.ndarray, sampling: Sampling, generator: np.random.Generator | None,
           seen: np.ndarray | None = None) -> int:
    """The next token from one step's logits (vocab,); `seen`: the ids a repetition penalty hits."""
    if seen is not None:
        hit = np.where(logits > 0, logits / sampling.repetition_penalty, logits * sampling.repetition_penalty)
        logits = np.where(seen, hit, logits)
    if generator is None:
        return int(np.argmax(logits))
    scores = logits.astype(np.float64)
    if sampling.temperature != 1.0:
        scores = scores / sampling.temperature
    if sampling.top_k is not None and sampling.top_k < scores.shape[-1]:
        kth = np.partition(scores, -sampling.top_k)[-sampling.top_k]
        scores = np.where(scores < kth, -np.inf, scores)
    if sampling.top_p is not None and sampling.top_p < 1.0:
        order = np.argsort(-scores, kind="stable")
        probs = softmax(scores[order])
        drop = np.cumsum(probs) - probs >= sampling.top_p  # the smallest set reaching top_p; the first always
        scores = scores.copy()
        scores[order[drop]] = -np.inf
    if sampling.min_p:
        scores = np.where(scores < np.max(scores) + math.log(sampling.min_p), -np.inf, scores)
    cumulative = np.cumsum(softmax(scores))
    picked = int(np.searchsorted(cumulative, generator.random() * cumulative[-1], side="right"))
    return min(picked, scores.shape[-1] - 1)


def constrained(logits: np.ndarray, allowed: Sequence[int]) -> np.ndarray:
    """`logits` with every id but `allowed` at -inf (structured output's mask for this step)."""
    masked = np.full_like(logits, -np.inf)
    index = np.asarray(allowed, dtype=np.int64)
    masked[index] = logits[index]
    return masked


def softmax(scores: np.ndarray) -> np.ndarray:
    shifted = np.exp(scores - np.max(scores))
    return shifted / shifted.sum()


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64 (logits (..., vocab))."""
    scores = logits.astype(np.float64)
    top = np.max(scores, axis=-1, keepdims=True)
    return scores - top - np.log(np.exp(scores - top).sum(axis=-1, keepdims=True))


def top_entries(logprobs: np.ndarray, k: int) -> tuple[list[int], list[float]]:
    """The k most likely ids of one row of log-probabilities (vocab,) and theirs, best first."""
    k = min(k, logprobs.shape[-1])
    ids = np.argpartition(-logprobs, k - 1)[:k]
    ids = ids[np.argsort(-logprobs[ids], kind="stable")]
    return ids.tolist(), logprobs[ids].tolist()


def step_record(logits: np.ndarray, token: int, sampling: Sampling, records: LogprobRecords) -> TokenLogprob:
    """The chosen token's log-probability (and the request's top-k) from the step's logits."""
    logprobs = log_softmax(logits)
    tops = top_entries(logprobs, sampling.logprobs) if sampling.logprobs else ((), ())
    return records.token(token, float(logprobs[token]), *tops)

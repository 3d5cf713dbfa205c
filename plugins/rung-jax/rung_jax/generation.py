"""Generation for the JAX model: a KV cache, and the whole decode loop inside one `jit`.

`generate_ids` runs prefill and a `lax.while_loop` of single-token steps in one compiled
function (stopping at a stop token or `max_tokens`); `stream_ids` runs a jitted prefill then
one jitted step per token so text can be shown as it comes (also used when stop strings must
be watched). `generate_rows` decodes many prompts at once (left-padded into one batch, each
row with its own key and stop, the loop running until every row is done): online RL's
sampler (`rung_jax.sampling`). Shapes are bucketed (prompt and cache lengths rounded up to
powers of two) so a handful of compilations serve every request. Sampling (greedy,
temperature, top-k, top-p, min-p, the repetition penalty: the `knobs`) takes traced values:
changing them never recompiles. Every program carries each row's `seen` ids (the prompt's and
those picked since, a bool [V]) for the repetition penalty; at penalty 1 it changes nothing.

`stream_scored` is `stream_ids` with log-probabilities (a request that asks for them): the
same keys and choices, and each step also returns the log-softmax of the logits that chose
the token (the model's own, before temperature, top-k and top-p) at that token and its
TOP_LOGPROBS largest, the prefill the same for every prompt position (echo). Its programs are
separate, so a request without log-probabilities runs exactly as before.

Structured output (`Sampling.constraint`): `generate_ids`, `stream_ids` and `stream_scored`
hand a constrained request to `_constrained`, step-by-step programs that take each step's
allowed-ids mask (from the row's `TokenGuide`) as an input and pick only among those ids (the
scores stay the model's own). Unconstrained requests run the programs above, unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import lru_cache
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rung.decoding import Sampling, context_error
from rung.errors import RungError

MAX_STOP_IDS = 4
TOP_LOGPROBS = 20  # the most any request may ask for (OpenAI's limit): computed once, sliced per request


def choose(logits: jax.Array, key: jax.Array, temperature, top_k, top_p, min_p=0.0) -> jax.Array:
    """The next token from logits [V]: greedy when temperature <= 0, else sampled (temperature,
    top-k, top-p, then min-p: tokens at least min_p times as likely as the most likely one)."""
    logits = logits.astype(jnp.float32)
    greedy = jnp.argmax(logits).astype(jnp.int32)
    vocab = logits.shape[-1]
    scores = logits / jnp.maximum(temperature, 1e-6)
    ordered = jnp.sort(scores)[::-1]
    k = jnp.where(top_k > 0, jnp.minimum(top_k, vocab), vocab)
    scores = jnp.where(scores < ordered[k - 1], -jnp.inf, scores)
    ordered = jnp.where(jnp.arange(vocab) < k, ordered, -jnp.inf)
    probs = jax.nn.softmax(ordered)
    keep = (jnp.cumsum(probs) - probs) < top_p  # the smallest set reaching top_p, first always
    threshold = jnp.min(jnp.where(keep, ordered, jnp.inf))
    scores = jnp.where(scores < threshold, -jnp.inf, scores)
    floor = jnp.where(min_p > 0, jnp.max(scores) + jnp.log(jnp.maximum(min_p, 1e-30)), -jnp.inf)
    scores = jnp.where(scores < floor, -jnp.inf, scores)
    sampled = jax.random.categorical(key, scores).astype(jnp.int32)
    return jnp.where((temperature <= 0) | (top_k == 1), greedy, sampled)


def penalize(logits: jax.Array, seen: jax.Array, penalty) -> jax.Array:
    """CTRL's repetition penalty: each seen id's logit divided by `penalty` where positive,
    multiplied where negative (transformers' RepetitionPenaltyLogitsProcessor); 1: unchanged."""
    logits = logits.astype(jnp.float32)
    return jnp.where(seen, jnp.where(logits > 0, logits / penalty, logits * penalty), logits)


def _pick(logits: jax.Array, seen: jax.Array, key: jax.Array, knobs) -> tuple[jax.Array, jax.Array]:
    """(the next token of logits [V] under `knobs`, `seen` with it added)."""
    temperature, top_k, top_p, min_p, penalty = knobs
    token = choose(penalize(logits, seen, penalty), key, temperature, top_k, top_p, min_p)
    return token, seen.at[token].set(True)


def _seen(prompt: jax.Array, n_prompt, vocab: int) -> jax.Array:
    """bool [V]: the ids of a prompt row's first `n_prompt` tokens."""
    ids = jnp.where(jnp.arange(prompt.shape[-1]) < n_prompt, prompt, vocab)  # padding: dropped
    return jnp.zeros((vocab,), bool).at[ids].set(True, mode="drop")


def _knobs(sampling: Sampling) -> tuple:
    return (jnp.float32(sampling.temperature or 0.0), jnp.int32(sampling.top_k or 0),
            jnp.float32(sampling.top_p if sampling.top_p is not None else 1.0),
            jnp.float32(sampling.min_p or 0.0), jnp.float32(sampling.repetition_penalty))


def _bucket(n: int, floor: int = 16) -> int:
    return max(floor, 1 << max(0, (n - 1).bit_length()))


@lru_cache(maxsize=32)
def _programs(graphdef: Any, prompt_len: int, cache_len: int):
    """Compiled prefill, step and whole-loop functions for one (model structure, shapes)."""

    def prefill(state, prompt, n_prompt, key, knobs):
        model = nnx.merge(graphdef, state)
        cache = model.init_cache(1, cache_len)
        logits, cache = model.decode(prompt, cache, 0)
        key, sub = jax.random.split(key)
        token, seen = _pick(logits[0, n_prompt - 1], _seen(prompt[0], n_prompt, logits.shape[-1]), sub, knobs)
        return token, cache, key, seen

    def step(state, token, cache, index, key, seen, knobs):
        model = nnx.merge(graphdef, state)
        logits, cache = model.decode(token.reshape(1, 1), cache, index)
        key, sub = jax.random.split(key)
        token, seen = _pick(logits[0, -1], seen, sub, knobs)
        return token, cache, key, seen

    def whole(state, prompt, n_prompt, max_new, stop_ids, key, knobs):
        token, cache, key, seen = prefill(state, prompt, n_prompt, key, knobs)
        out = jnp.zeros((cache_len,), jnp.int32).at[0].set(token)

        def cond(carry):
            i, token, _, _, _, _ = carry
            return (i < max_new) & ~jnp.any(token == stop_ids)

        def body(carry):
            i, token, cache, key, seen, out = carry
            token, cache, key, seen = step(state, token, cache, n_prompt + i - 1, key, seen, knobs)
            return i + 1, token, cache, key, seen, out.at[i].set(token)

        count, _, _, _, _, out = jax.lax.while_loop(cond, body, (jnp.int32(1), token, cache, key, seen, out))
        return out, count

    return jax.jit(prefill), jax.jit(step, donate_argnums=(2,)), jax.jit(whole)


def _scores(logits: jax.Array, tokens: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(logprob of each of `tokens`, top values, top ids) of logits [..., V] (the last axis)."""
    logprobs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    own = jnp.take_along_axis(logprobs, tokens[..., None], axis=-1)[..., 0]
    values, ids = jax.lax.top_k(logprobs, min(TOP_LOGPROBS, logprobs.shape[-1]))
    return own, values, ids


@lru_cache(maxsize=32)
def _scored_programs(graphdef: Any, prompt_len: int, cache_len: int):
    """`_programs`' prefill and step, also returning the scores (`_scores`) of what they choose;
    the prefill also scores every prompt position (position j predicts token j + 1)."""

    def prefill(state, prompt, n_prompt, key, knobs):
        model = nnx.merge(graphdef, state)
        cache = model.init_cache(1, cache_len)
        logits, cache = model.decode(prompt, cache, 0)
        key, sub = jax.random.split(key)
        last = logits[0, n_prompt - 1]
        token, seen = _pick(last, _seen(prompt[0], n_prompt, logits.shape[-1]), sub, knobs)
        return token, cache, key, seen, _scores(last, token), _scores(logits[0, :-1], prompt[0, 1:])

    def step(state, token, cache, index, key, seen, knobs):
        model = nnx.merge(graphdef, state)
        logits, cache = model.decode(token.reshape(1, 1), cache, index)
        key, sub = jax.random.split(key)
        token, seen = _pick(logits[0, -1], seen, sub, knobs)
        return token, cache, key, seen, _scores(logits[0, -1], token)

    return jax.jit(prefill), jax.jit(step, donate_argnums=(2,))


def _setup(model: nnx.Module, prompt: Sequence[int], sampling: Sampling, dtype: Any):
    context = model.arch.max_seq_len
    n = len(prompt)
    if n == 0:
        raise RungError("the prompt encodes to no tokens: give some text to continue")
    if n + sampling.max_tokens > context:  # the backend checked already (rung.decoding)
        raise context_error(n, sampling.max_tokens, context)
    max_new = sampling.max_tokens
    prompt_len = min(_bucket(n), context)
    cache_len = min(_bucket(n + max_new), context)
    graphdef, state = nnx.split(model)
    if dtype is not None and dtype != jnp.float32:
        state = jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, state)
    padded = np.zeros((1, prompt_len), np.int32)
    padded[0, :n] = prompt
    seed = sampling.seed if sampling.seed is not None else int(np.random.SeedSequence().entropy % 2**31)
    return graphdef, state, padded, n, max_new, prompt_len, cache_len, jax.random.key(seed), _knobs(sampling)


@lru_cache(maxsize=32)
def _masked_programs(graphdef: Any, prompt_len: int, cache_len: int):
    """`_scored_programs` picking only where a mask [V] (bool) allows: structured output."""

    def prefill(state, prompt, n_prompt, key, mask, knobs):
        model = nnx.merge(graphdef, state)
        cache = model.init_cache(1, cache_len)
        logits, cache = model.decode(prompt, cache, 0)
        key, sub = jax.random.split(key)
        last = logits[0, n_prompt - 1]
        token, seen = _pick(jnp.where(mask, last, -jnp.inf), _seen(prompt[0], n_prompt, logits.shape[-1]), sub, knobs)
        return token, cache, key, seen, _scores(last, token), _scores(logits[0, :-1], prompt[0, 1:])

    def step(state, token, cache, index, key, seen, mask, knobs):
        model = nnx.merge(graphdef, state)
        logits, cache = model.decode(token.reshape(1, 1), cache, index)
        key, sub = jax.random.split(key)
        last = logits[0, -1]
        token, seen = _pick(jnp.where(mask, last, -jnp.inf), seen, sub, knobs)
        return token, cache, key, seen, _scores(last, token)

    return jax.jit(prefill), jax.jit(step, donate_argnums=(2,))


def _constrained(model: nnx.Module, prompt: Sequence[int], sampling: Sampling, dtype: Any = None
                 ) -> tuple[tuple[list[float], list[list[float]], list[list[int]]], Iterator[tuple[int, Scores]]]:
    """`stream_scored` under `sampling.constraint`: each step picks among the ids the row's
    guide allows (a mask per guide state, cached on the constraint)."""
    graphdef, state, padded, n, max_new, p_len, c_len, key, knobs = _setup(model, prompt, sampling, dtype)
    prefill, step = _masked_programs(graphdef, p_len, c_len)
    constraint, vocab = sampling.constraint, model.arch.vocab_size
    guide = constraint.guide(sampling.stop_ids, max_new)

    def mask() -> np.ndarray:
        allowed, ids = guide.allowed()
        found = constraint.cache.get((allowed, "jax", vocab))
        if found is None:
            found = np.zeros((vocab,), bool)
            found[ids if ids and not guide.failed else slice(None)] = True
            constraint.cache[(allowed, "jax", vocab)] = found
        return found

    token, cache, key, seen, scores, prompt_scores = prefill(state, padded, jnp.int32(n), key, mask(), knobs)
    own, values, ids = (np.asarray(a)[: n - 1].tolist() for a in prompt_scores)

    def tokens() -> Iterator[tuple[int, Scores]]:
        nonlocal token, cache, key, seen, scores
        for i in range(1, max_new + 1):
            value = int(token)
            lp, top_values, top_ids = (np.asarray(a).tolist() for a in scores)
            yield value, (lp, top_values, top_ids)
            if i == max_new or value in sampling.stop_ids:
                return
            guide.advance(value)
            if guide.finished:  # complete JSON and no stop id to end it
                return
            token, cache, key, seen, scores = step(state, token, cache, jnp.int32(n + i - 1), key, seen, mask(),
                                                   knobs)

    return (own, values, ids), tokens()


def generate_ids(model: nnx.Module, prompt: Sequence[int], sampling: Sampling, dtype: Any = None) -> list[int]:
    """Every token of one completion (a final stop token included), decoded inside one jit."""
    if sampling.constraint is not None:
        return [token for token, _ in _constrained(model, prompt, sampling, dtype)[1]]
    graphdef, state, padded, n, max_new, p_len, c_len, key, knobs = _setup(model, prompt, sampling, dtype)
    _, _, whole = _programs(graphdef, p_len, c_len)
    stops = np.full((MAX_STOP_IDS,), -1, np.int32)
    ids = sorted(sampling.stop_ids)[:MAX_STOP_IDS]
    stops[: len(ids)] = ids
    out, count = whole(state, padded, jnp.int32(n), jnp.int32(max_new), stops, key, knobs)
    return np.asarray(out)[: int(count)].tolist()


def stream_ids(model: nnx.Module, prompt: Sequence[int], sampling: Sampling, dtype: Any = None) -> Iterator[int]:
    """The tokens of one completion one at a time (jitted prefill, then one jitted step each)."""
    if sampling.constraint is not None:
        yield from (token for token, _ in _constrained(model, prompt, sampling, dtype)[1])
        return
    graphdef, state, padded, n, max_new, p_len, c_len, key, knobs = _setup(model, prompt, sampling, dtype)
    prefill, step, _ = _programs(graphdef, p_len, c_len)
    token, cache, key, seen = prefill(state, padded, jnp.int32(n), key, knobs)
    for i in range(1, max_new + 1):
        value = int(token)
        yield value
        if i == max_new or value in sampling.stop_ids:
            return
        token, cache, key, seen = step(state, token, cache, jnp.int32(n + i - 1), key, seen, knobs)


Scores = tuple[float, list[float], list[int]]  # (the token's logprob, top values, top ids), best first


def stream_scored(model: nnx.Module, prompt: Sequence[int], sampling: Sampling, dtype: Any = None
                  ) -> tuple[tuple[list[float], list[list[float]], list[list[int]]], Iterator[tuple[int, Scores]]]:
    """(the prompt's scores, the tokens of one completion with theirs): `stream_ids` with
    log-probabilities. The prefill runs now; the prompt's scores are (logprobs of tokens 1..n-1,
    their top values, top ids)."""
    if sampling.constraint is not None:
        return _constrained(model, prompt, sampling, dtype)
    graphdef, state, padded, n, max_new, p_len, c_len, key, knobs = _setup(model, prompt, sampling, dtype)
    prefill, step = _scored_programs(graphdef, p_len, c_len)
    token, cache, key, seen, scores, prompt_scores = prefill(state, padded, jnp.int32(n), key, knobs)
    own, values, ids = (np.asarray(a)[: n - 1].tolist() for a in prompt_scores)

    def tokens() -> Iterator[tuple[int, Scores]]:
        nonlocal token, cache, key, seen, scores
        for i in range(1, max_new + 1):
            value = int(token)
            lp, top_values, top_ids = (np.asarray(a).tolist() for a in scores)
            yield value, (lp, top_values, top_ids)
            if i == max_new or value in sampling.stop_ids:
                return
            token, cache, key, seen, scores = step(state, token, cache, jnp.int32(n + i - 1), key, seen, knobs)

    return (own, values, ids), tokens()


def _stop_array(stop_ids) -> np.ndarray:
    """Stop ids padded with -1 to a bucketed length (at least MAX_STOP_IDS: few compilations)."""
    ids = sorted(stop_ids)
    stops = np.full((max(MAX_STOP_IDS, _bucket(len(ids), 1)),), -1, np.int32)
    stops[: len(ids)] = ids
    return stops


@lru_cache(maxsize=32)
def _rows_program(graphdef: Any, rows: int, prompt_len: int, cache_len: int, dtype: Any):
    """One compiled batched decode for (model structure, rows, bucketed prompt and cache lengths)."""

    def sample(logits, seen, keys, knobs):
        split = jax.vmap(jax.random.split)(keys)  # per row, as generate_ids splits its one key
        pick_rows = jax.vmap(_pick, in_axes=(0, 0, 0, None))
        token, seen = pick_rows(logits, seen, split[:, 1], knobs)
        return token, seen, split[:, 0]

    def whole(state, prompts, offsets, max_new, stop_ids, keys, knobs):
        if dtype is not None:
            state = jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, state)
        model = nnx.merge(graphdef, state)
        cache = model.init_cache(rows, cache_len)
        logits, cache = model.decode(prompts, cache, 0, offsets)
        vocab = logits.shape[-1]
        real = jnp.arange(prompt_len)[None, :] >= offsets[:, None]  # left padding: not seen
        ids = jnp.where(real, prompts, vocab)
        seen = jax.vmap(lambda row: jnp.zeros((vocab,), bool).at[row].set(True, mode="drop"))(ids)
        token, seen, keys = sample(logits[:, -1], seen, keys, knobs)  # left padding: the last column
        out = jnp.zeros((rows, cache_len - prompt_len), jnp.int32).at[:, 0].set(token)
        done = jnp.isin(token, stop_ids) | (max_new <= 1)
        count = jnp.ones((rows,), jnp.int32)

        def cond(carry):
            i, _, _, _, _, _, done, _ = carry
            return (i < max_new) & ~jnp.all(done)

        def body(carry):
            i, token, cache, keys, seen, out, done, count = carry
            logits, cache = model.decode(token[:, None], cache, prompt_len + i - 1, offsets)
            token, seen, keys = sample(logits[:, -1], seen, keys, knobs)
            out = out.at[:, i].set(token)  # a finished row's extra tokens are never read (count)
            count = jnp.where(done, count, count + 1)
            done = done | jnp.isin(token, stop_ids) | (i + 1 >= max_new)
            return i + 1, token, cache, keys, seen, out, done, count

        carry = (jnp.int32(1), token, cache, keys, seen, out, done, count)
        _, _, _, _, _, out, _, count = jax.lax.while_loop(cond, body, carry)
        return out, count

    return jax.jit(whole)


def generate_rows(model: nnx.Module, prompts: Sequence[Sequence[int]], sampling: Sampling,
                  dtype: Any = None) -> list[list[int]]:
    """Each prompt's new tokens (a final stop token included, at most `sampling.max_tokens`),
    all prompts decoded together with a KV cache inside one jit. Row i samples with the key
    `generate_ids` would use at seed `sampling.seed + i`; greedy at temperature 0."""
    if not prompts:
        return []
    context = model.arch.max_seq_len
    lengths = [len(p) for p in prompts]
    for n in lengths:
        if n == 0:
            raise RungError("a prompt encodes to no tokens: give some text to continue")
        if n + sampling.max_tokens > context:
            raise context_error(n, sampling.max_tokens, context)
    rows, max_new = len(prompts), sampling.max_tokens
    prompt_len = _bucket(max(lengths))
    cache_len = prompt_len + _bucket(max_new)  # positions stay < context; columns may exceed it
    padded = np.zeros((rows, prompt_len), np.int32)
    offsets = np.array([prompt_len - n for n in lengths], np.int32)
    for i, prompt in enumerate(prompts):
        padded[i, offsets[i]:] = prompt
    seed = sampling.seed if sampling.seed is not None else int(np.random.SeedSequence().entropy % 2**31)
    keys = jax.vmap(jax.random.key)(jnp.arange(rows, dtype=jnp.uint32) + np.uint32(seed))
    knobs = _knobs(sampling)
    graphdef, state = nnx.split(model)
    floating = {v.dtype for v in jax.tree.leaves(state) if jnp.issubdtype(v.dtype, jnp.floating)}
    cast = dtype if dtype is not None and floating != {jnp.dtype(dtype)} else None
    whole = _rows_program(graphdef, rows, prompt_len, cache_len, cast)
    out, count = whole(state, padded, offsets, jnp.int32(max_new), _stop_array(sampling.stop_ids), keys, knobs)
    out, count = np.asarray(out), np.asarray(count)
    return [out[i, : int(count[i])].tolist() for i in range(rows)]

"""Continuous batching for the jax backend: `JaxDecodeSlots` (`rung.interfaces.DecodeSlots`).

XLA wants static shapes, so the batch is one fixed KV cache of `max_slots` rows by the
model's context (allocated when a batch starts), each row with its own length, and a slot is
a row. A request that joins takes the lowest free row and is prefilled alone by a jitted
program per prompt-length bucket (`rung_jax.generation._bucket`: powers of two), which writes
the prompt's keys and values into its row at columns 0..n-1 and picks its first token, as
`generate` does (the same key split, the same `_pick`). A step is one jitted program over the
first B rows (B: the highest row in use rounded up to a power of two, at most max_slots, so a
lone client does not pay for 32 rows) and the first W columns (W: the longest row's length
plus one, rounded up to a power of two, at least MIN_WIDTH: attention and the cache's traffic
grow with the columns, so short requests on a long context do not pay for all of it):
`Llama.decode` run under `jax.vmap` on that window, one row at a time in effect, each at its
own cache column, so each row sees exactly the keys it would see alone; rows not in use are
computed (at column 0, a free row's scratch) and never read. The compiled programs are cached
by model structure and shapes: a new batch, or a new `JaxDecodeSlots`, reuses them.

Each row keeps, on the device, its next token, its PRNG key (split once per token, as
`generate_ids` splits its one key: a seeded request draws what it draws alone) and its seen
ids (the repetition penalty); the sampling knobs (temperature, top-k, top-p, min-p, penalty)
and lengths are per-row inputs (traced: changing them never recompiles). While no row samples,
the step is a variant that takes the argmax of the penalised logits (the token `choose` gives
at temperature 0) without `choose`'s sort, which is also the cheaper one to compile. So the
step programs are at most (log2(max_slots) + 1) row counts x (log2(context / MIN_WIDTH) + 1)
widths x {greedy, sampled} x {free, constrained}, each compiled the first time a batch needs
it (a server's first requests wait for those compilations: seconds each on a CPU).

A step reads the tokens the last program picked, turns them into text (`RowDecoder`: stop
strings, stop ids, max_tokens), then dispatches the next step before returning: JAX runs it
asynchronously, so rung serve sends this step's text while the model computes the next one.
A row cancelled or finished in between is simply not read (its row is overwritten by the next
prefill into it, which runs after the step in device order).

Structured output and token healing (`Sampling.constraint`): each row's `TokenGuide` gives the
allowed ids of its next token; the prefill always takes a mask [V] (all True when free), and
while any row has a guide the step is a masked variant that takes a mask [S, V] (compiled the
first time one is needed). Requests for log-probabilities or echo are refused by `accepts`
(rung serve runs them through `generate`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rung.decoding import RowDecoder, Sampling
from rung.decoding.slots import admit, slot_decodable
from rung.records import Delta, GenerationRequest, Usage
from rung_jax.generation import _bucket, _knobs, _pick, _seen, choose, penalize


@dataclass(eq=False)
class _Request:
    """What one slot holds (its slot is its cache row)."""

    slot: int
    decoder: RowDecoder
    sampling: Sampling
    guide: Any  # the constraint's TokenGuide (structured output, token healing), or None
    length: int  # cache columns filled: the prompt and every token fed back
    picked: bool  # a token picked on the device waits to be read (False: nothing to decode)


class JaxDecodeSlots:
    """`max_slots` requests decoding together on one `JaxBackend` (see the module docstring).

    Called from one thread only (rung serve's scheduler)."""

    def __init__(self, backend: Any, max_slots: int) -> None:
        if max_slots < 1:
            raise ValueError(f"max_slots must be at least 1, got {max_slots}")
        self.backend = backend
        self.max_slots = max_slots
        self.context = backend.model.arch.max_seq_len
        self.vocab = backend.model.arch.vocab_size
        self._entries: dict[int, _Request] = {}
        self._free_slots = set(range(max_slots))
        self._batch: _Batch | None = None  # resolved when a batch starts from empty
        self._stale = False  # a program failed: the next batch allocates everything again

    @property
    def free(self) -> int:
        return len(self._free_slots)

    @property
    def active(self) -> int:
        return len(self._entries)

    def accepts(self, request: GenerationRequest) -> bool:
        return slot_decodable(request)

    # -- joining

    def add(self, request: GenerationRequest) -> int:
        prompt, sampling = admit(self, request)
        n = len(prompt)
        if self._batch is None or (not self._entries and (self._stale or not self._batch.current(self.backend))):
            # a batch starting from empty keeps the last one's cache unless the weights changed
            self._batch, self._stale = _Batch(self.backend, self.max_slots), False
        batch = self._batch
        slot = min(self._free_slots)
        decoder = RowDecoder(self.backend._tokenizer(), sampling, n, incremental=True)
        guide = sampling.constraint.guide(sampling.stop_ids, sampling.max_tokens) if sampling.constraint else None
        entry = _Request(slot, decoder, sampling, guide, n, picked=not decoder.done)
        if entry.picked:
            seed = sampling.seed if sampling.seed is not None else int(np.random.SeedSequence().entropy % 2**31)
            mask = batch.mask_of(entry) if guide is not None else batch.everything
            try:
                batch.prefill(slot, prompt, seed, _knobs(sampling), mask)
            except BaseException:
                self._stale = True  # its buffers may be gone: the next batch starts afresh
                raise
            knobs = batch.knobs
            knobs[0][slot], knobs[1][slot], knobs[2][slot], knobs[3][slot], knobs[4][slot] = _row_knobs(sampling)
        self._free_slots.discard(slot)
        self._entries[slot] = entry
        return slot

    # -- the step

    def step(self) -> list[tuple[int, Delta]]:
        if not self._entries:
            return []
        batch = self._batch
        try:
            tokens = batch.read_tokens() if any(e.picked for e in self._entries.values()) else None
        except BaseException:  # a program that failed as it ran
            self._stale = True
            raise
        name = self.backend.name
        out: list[tuple[int, Delta]] = []
        for slot in sorted(self._entries):
            entry = self._entries[slot]
            decoder = entry.decoder
            if entry.picked:
                token = tokens[slot]
                text = decoder.push(token)
                if not decoder.done and entry.guide is not None:
                    entry.guide.advance(token)
                    if entry.guide.finished:  # complete JSON and no stop id to end it: as generate ends
                        text += decoder.finish("length")
            else:
                text = decoder.finish("length")
            if decoder.done:
                usage = Usage(prompt_tokens=decoder.prompt_tokens, completion_tokens=decoder.completion_tokens)
                out.append((slot, Delta(text, decoder.finish_reason, usage, name)))
                self._release(slot)
            elif text:
                out.append((slot, Delta(text, model=name)))
        if self._entries:
            # The next step runs now, asynchronously: this step's text goes out while it computes.
            rows = min(_bucket(max(self._entries) + 1, 1), self.max_slots)
            lengths = np.zeros((rows,), np.int32)
            for slot, entry in self._entries.items():
                lengths[slot] = entry.length
                entry.length += 1
            masks = None
            if any(e.guide is not None for e in self._entries.values()):
                masks = np.ones((rows, self.vocab), bool)
                for slot, entry in self._entries.items():
                    if entry.guide is not None:
                        masks[slot] = batch.mask_of(entry)
            try:
                batch.step(rows, lengths, masks)
            except BaseException:
                self._stale = True
                raise
        return out

    # -- leaving

    def cancel(self, slot: int) -> None:
        if slot in self._entries:
            self._release(slot)

    def _release(self, slot: int) -> None:
        del self._entries[slot]
        self._free_slots.add(slot)
        for knob, off in zip(self._batch.knobs, _GREEDY):
            knob[slot] = off  # a free row is greedy: it never makes the step sample


_GREEDY = (0.0, 0, 1.0, 0.0, 1.0)  # _row_knobs of a greedy request without a penalty
MIN_WIDTH = 64  # the fewest cache columns a step attends to (fewer widths, fewer programs to compile)


def _row_knobs(sampling: Sampling) -> tuple[float, int, float, float, float]:
    return (sampling.temperature or 0.0, sampling.top_k or 0,
            sampling.top_p if sampling.top_p is not None else 1.0, sampling.min_p or 0.0,
            sampling.repetition_penalty)


class _Batch:
    """The device side of a running batch: the model's parameters (in the decoding precision),
    the cache and each row's token, key and seen ids, and the compiled programs."""

    def __init__(self, backend: Any, rows: int) -> None:
        graphdef, state = nnx.split(backend.model)
        self.graphdef, self.weights = graphdef, jax.tree.leaves(state)
        dtype = backend._decode_dtype()
        if dtype is not None and dtype != jnp.float32:
            state = jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, state)
        self.leaves, treedef = jax.tree.flatten(state)
        self.programs = _programs(graphdef, treedef, rows, backend.model.arch.max_seq_len)
        self.cache, self.tokens, self.keys, self.seen = self.programs.start(self.leaves)
        self.vocab = backend.model.arch.vocab_size
        self.everything = np.ones((self.vocab,), bool)
        self.knobs = (np.zeros((rows,), np.float32), np.zeros((rows,), np.int32), np.ones((rows,), np.float32),
                      np.zeros((rows,), np.float32), np.ones((rows,), np.float32))

    def current(self, backend: Any) -> bool:
        """Whether the backend's model is still the one this batch holds (the same structure and
        the same weight arrays: a training step or new adapters replace them)."""
        graphdef, state = nnx.split(backend.model)
        weights = jax.tree.leaves(state)
        return (graphdef == self.graphdef and len(weights) == len(self.weights)
                and all(a is b for a, b in zip(weights, self.weights)))

    def prefill(self, row: int, prompt: list[int], seed: int, knobs: tuple, mask: np.ndarray) -> None:
        context = self.programs.context
        width = min(_bucket(len(prompt)), context)
        padded = np.zeros((1, width), np.int32)
        padded[0, :len(prompt)] = prompt
        program = self.programs.prefill(width)
        self.cache, self.tokens, self.keys, self.seen = program(
            self.leaves, self.cache, self.tokens, self.keys, self.seen, jnp.int32(row), padded,
            jnp.int32(len(prompt)), jax.random.key(seed), knobs, mask)

    def step(self, rows: int, lengths: np.ndarray, masks: np.ndarray | None) -> None:
        knobs = tuple(k[:rows].copy() for k in self.knobs)  # add() changes them while this runs
        temperature, top_k = knobs[0], knobs[1]
        sampled = bool(np.any((temperature > 0) & (top_k != 1)))
        context = self.programs.context
        width = min(max(_bucket(int(lengths.max()) + 1), MIN_WIDTH), context)
        program = self.programs.step(rows, width, masks is not None, sampled)
        args = (self.leaves, self.cache, self.tokens, self.keys, self.seen, lengths, knobs)
        self.cache, self.tokens, self.keys, self.seen = program(*args, masks) if masks is not None else program(*args)

    def read_tokens(self) -> list[int]:
        return np.asarray(self.tokens).tolist()

    def mask_of(self, entry: _Request) -> np.ndarray:
        """bool [V]: the ids `entry`'s guide allows next (cached on its constraint, as
        `rung_jax.generation._constrained` caches them)."""
        guide, constraint = entry.guide, entry.sampling.constraint
        allowed, ids = guide.allowed()
        found = constraint.cache.get((allowed, "jax", self.vocab))
        if found is None:
            found = np.zeros((self.vocab,), bool)
            found[ids if ids and not guide.failed else slice(None)] = True
            constraint.cache[(allowed, "jax", self.vocab)] = found
        return found


class _Programs:
    """The compiled programs of one (model structure, slots, context); each compiles when first run."""

    def __init__(self, graphdef: Any, treedef: Any, rows: int, context: int) -> None:
        self.graphdef, self.treedef, self.rows, self.context = graphdef, treedef, rows, context
        self._prefills: dict[int, Any] = {}
        self._steps: dict[tuple[int, int, bool, bool], Any] = {}
        self.start = jax.jit(self._start)

    def _model(self, leaves):
        return nnx.merge(self.graphdef, jax.tree.unflatten(self.treedef, leaves))

    def _start(self, leaves):
        model = self._model(leaves)
        cache = model.init_cache(self.rows, self.context)
        keys = jax.random.split(jax.random.key(0), self.rows)
        return (cache, jnp.zeros((self.rows,), jnp.int32), keys,
                jnp.zeros((self.rows, model.arch.vocab_size), bool))

    def prefill(self, width: int):
        """The program that prefills one row from a prompt padded to `width` columns."""
        found = self._prefills.get(width)
        if found is None:
            def prefill(leaves, cache, tokens, keys, seen, row, prompt, n, key, knobs, mask):
                model = self._model(leaves)
                logits, own = model.decode(prompt, model.init_cache(1, width), 0)
                key, sub = jax.random.split(key)
                last = logits[0, n - 1]
                token, row_seen = _pick(jnp.where(mask, last, -jnp.inf), _seen(prompt[0], n, logits.shape[-1]),
                                        sub, knobs)
                cache = tuple((jax.lax.dynamic_update_slice(k, nk.astype(k.dtype), (row, 0, 0, 0)),
                               jax.lax.dynamic_update_slice(v, nv.astype(v.dtype), (row, 0, 0, 0)))
                              for (k, v), (nk, nv) in zip(cache, own))
                return cache, tokens.at[row].set(token), keys.at[row].set(key), seen.at[row].set(row_seen)

            found = self._prefills[width] = jax.jit(prefill, donate_argnums=(1, 2, 3, 4))
        return found

    def step(self, rows: int, width: int, masked: bool, sampled: bool):
        """The program that feeds rows 0..rows-1 their tokens and picks the next ones, attending
        to the first `width` columns of the cache (`masked`: it takes each row's allowed ids;
        `sampled`: some row samples, else every row is greedy)."""
        key = (rows, width, masked, sampled)
        found = self._steps.get(key)
        if found is None:
            def step(leaves, cache, tokens, keys, seen, lengths, knobs, masks=None):
                model = self._model(leaves)

                def one(token, row_cache, index):
                    batched = tuple((k[None], v[None]) for k, v in row_cache)
                    logits, batched = model.decode(token.reshape(1, 1), batched, index)
                    return logits[0, -1], tuple((k[0], v[0]) for k, v in batched)

                part = tuple((k[:rows, :width], v[:rows, :width]) for k, v in cache)
                logits, part = jax.vmap(one)(tokens[:rows], part, lengths)
                if masks is not None:
                    logits = jnp.where(masks, logits, -jnp.inf)
                split = jax.vmap(jax.random.split)(keys[:rows])
                picked = _pick_rows(logits, seen[:rows], split[:, 1], knobs, sampled)
                cache = tuple((jax.lax.dynamic_update_slice(k, nk, (0, 0, 0, 0)),
                               jax.lax.dynamic_update_slice(v, nv, (0, 0, 0, 0)))
                              for (k, v), (nk, nv) in zip(cache, part))
                row_seen = seen[:rows].at[jnp.arange(rows), picked].set(True)
                return (cache, tokens.at[:rows].set(picked), keys.at[:rows].set(split[:, 0]),
                        seen.at[:rows].set(row_seen))

            found = self._steps[key] = jax.jit(step, donate_argnums=(1, 2, 3, 4))
        return found


def _pick_rows(logits, seen, keys, knobs, sampled: bool):
    """Each row's next token under its own knobs: `generation._pick`, row by row; when no row
    samples, the argmax of the penalised logits alone (what `choose` gives at temperature 0)."""
    temperature, top_k, top_p, min_p, penalty = knobs
    scores = jax.vmap(penalize)(logits, seen, penalty)
    if not sampled:
        return jnp.argmax(scores, axis=-1).astype(jnp.int32)
    return jax.vmap(choose)(scores, keys, temperature, top_k, top_p, min_p)


@lru_cache(maxsize=16)
def _programs(graphdef: Any, treedef: Any, rows: int, context: int) -> _Programs:
    return _Programs(graphdef, treedef, rows, context)

"""Continuous batching for rung's Transformer: `TorchDecodeSlots` (`rung.interfaces.DecodeSlots`).

One static KV cache of `max_slots` rows by the model's context. `add` takes a free row; the
next `step` prefills the requests that joined since the last one (alone, straight into the
row, as `generate` does; several of similar lengths left-padded into one forward pass, as
`generate_batch` does, then moved to columns 0..length-1 of their rows), then decodes every
active row at once, each at its own length.

A step picks each row's next token and returns the text at once; the forward pass that feeds
those tokens back runs at the start of the next step (or in `add`, before a row joins). So the
caller hands a step's text on (rung serve: to the event loop, which sends it) while the model
computes the next logits; the forward pass releases the GIL, and the text is one forward pass
earlier than if the step fed the tokens before returning. The same tokens either way.

The batch is kept compact: active requests hold rows 0..n-1, so a step reads `cache[:n]` as a
view (no gather); when a request leaves, the last row's cache moves into its place. A slot id
(what callers hold) is a stable handle, the row behind it may change.

Rows of different lengths share one step through a scratch column: every row writes its new
key and value at column L (the longest row's length) with its own rotary position, attends to
its own columns 0..length-1 plus column L (a mask hides the rest), and the new key and value
are then moved to the row's own column `length`. So each row sees exactly the keys it would
see alone, in the same order, and both forward passes of `rung_torch.generate` (the flat
`FastForward` and the module path for wrapped layers) work unchanged. When every row has the
same length (one client), the step is `generate`'s own, unmasked.

Sampling is `picking.choose` (each row's own seeded generator, drawn once per step as alone;
min-p; a repetition penalty over the ids each row has seen, kept per row like its logits) after
`picking.constrain` (each row's guide: structured output, token healing), and text is
`rung.decoding.RowDecoder` (stop strings, stop ids, max_tokens), incremental.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from rung.decoding import RowDecoder, Sampling
from rung.decoding.slots import admit, slot_decodable
from rung.records import Delta, GenerationRequest, Usage
from rung_torch.generate import FastForward, computing, forward_for
from rung_torch.picking import choose, constrain, seen_prompt
from rung_torch.model import KVCache
from rung_torch.modeling import eval_mode


@dataclass
class _Request:
    """What one slot holds."""

    slot: int  # the caller's handle
    row: int  # its row in the cache now
    decoder: RowDecoder
    sampling: Sampling
    generator: torch.Generator | None
    length: int  # cache columns filled: the prompt and every token fed back
    prompt: list[int] | None  # the prompt ids until the prefill has written them
    token: int = -1  # the token chosen this step, fed at the next forward
    guide: Any = None  # the Sampling's constraint's guide (structured output, token healing)


class TorchDecodeSlots:
    """`max_slots` requests decoding together on one `TorchBackend` (see the module docstring).

    Called from one thread only (rung serve's scheduler). The cache is allocated at the first
    `add`: layers x max_slots x kv_heads x context x head_dim, keys and values, in the
    backend's decoding precision.
    """

    def __init__(self, backend: Any, max_slots: int) -> None:
        if max_slots < 1:
            raise ValueError(f"max_slots must be at least 1, got {max_slots}")
        from rung_torch.device import DTYPES

        self.backend = backend
        self.max_slots = max_slots
        self.device = backend.device
        self.dtype = DTYPES[backend.decode_precision]
        self.cache: KVCache | None = None
        self.logits: torch.Tensor | None = None  # (max_slots, vocab): each row's next-token logits
        self.seen: torch.Tensor | None = None  # (max_slots, vocab) bool: ids each row has seen (repetition penalty)
        self._rows: list[_Request] = []  # compact: self._rows[i].row == i
        self._by_slot: dict[int, _Request] = {}
        self._free_slots = list(range(max_slots - 1, -1, -1))  # popped from the end: 0 first
        # Resolved when a batch starts from empty, kept while it runs (as `generate` resolves
        # them once per call): the model, its forward pass, its parameter count.
        self._batch: _Batch | None = None
        self._unfed = False  # the last step's picks are not yet fed to the model (see the module docstring)

    @property
    def free(self) -> int:
        return len(self._free_slots)

    @property
    def active(self) -> int:
        return len(self._rows)

    def accepts(self, request: GenerationRequest) -> bool:
        return slot_decodable(request)

    # -- joining

    def add(self, request: GenerationRequest) -> int:
        prompt, sampling = admit(self, request)
        self._feed()  # the running rows' last picks first: rows that joined come after them
        if not self._rows or self._batch is None:
            self._batch = _Batch(self.backend, self.dtype)
        batch = self._batch
        if self.cache is None or self.cache.length != batch.context:
            self.cache = KVCache.allocate(batch.model.config, self.max_slots, batch.context, self.device, self.dtype)
        generator = None
        if not sampling.greedy:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(sampling.seed) if sampling.seed is not None else generator.seed()
        slot = self._free_slots.pop()
        decoder = RowDecoder(self.backend._tokenizer(), sampling, len(prompt), incremental=True)
        guide = sampling.constraint.guide(sampling.stop_ids, sampling.max_tokens) if sampling.constraint else None
        entry = _Request(slot, len(self._rows), decoder, sampling, generator, len(prompt), prompt, guide=guide)
        self._rows.append(entry)
        self._by_slot[slot] = entry
        return slot

    # -- the step

    def step(self) -> list[tuple[int, Delta]]:
        if not self._rows:
            return []
        batch = self._batch
        arrived = [entry for entry in self._rows if entry.prompt is not None]
        if arrived:  # (`add` fed the running rows first: none is unfed now)
            self._prefill(arrived)
        n = len(self._rows)
        rows = [r.sampling for r in self._rows]
        seen = self.seen[:n] if self.seen is not None and any(r.penalizes for r in rows) else None
        # One compute block: the last step's picks fed to the model, then this step's picked.
        with batch.computing(self.device, n):
            if self._unfed:
                self._forward(batch.forward)
            logits = self.logits[:n]
            if any(r.guide is not None for r in self._rows):
                logits = constrain(logits, [r.guide for r in self._rows], [False] * n)
            chosen = choose(logits, rows, [r.generator for r in self._rows], seen=seen).tolist()
        out: list[tuple[int, Delta]] = []
        finished: list[_Request] = []
        for entry, token in zip(self._rows, chosen):
            decoder = entry.decoder
            text = decoder.push(token)
            if entry.guide is not None and not decoder.done:
                entry.guide.advance(token)
                if entry.guide.finished:  # complete JSON and no stop id to end it
                    text += decoder.finish("stop")
            if not decoder.done and entry.length + 1 >= batch.context:
                text += decoder.finish("length")  # prompt + answer fill the context
            if decoder.done:
                usage = Usage(prompt_tokens=decoder.prompt_tokens, completion_tokens=decoder.generated)
                out.append((entry.slot, Delta(text, decoder.finish_reason, usage, self.backend.name)))
                finished.append(entry)
            else:
                entry.token = token
                if text:
                    out.append((entry.slot, Delta(text, model=self.backend.name)))
        for entry in finished:
            self._remove(entry)
        self._unfed = bool(self._rows)  # fed at the next step (or `add`), while the caller hands `out` on
        return out

    def _feed(self) -> None:
        """Feed the last step's picks to the model now (before a row joins)."""
        if self._unfed:
            with self._batch.computing(self.device, len(self._rows)):
                self._forward(self._batch.forward)

    def _prefill(self, arrived: list[_Request]) -> None:
        """Write the prompts of requests that joined since the last step into their rows, and
        their first logits: a group of prompts of similar lengths left-padded into one forward
        pass (as `generate` prefills a batch), then each row's columns moved to 0..length-1."""
        batch = self._batch
        for group in _similar_lengths(arrived):
            lengths = [len(entry.prompt) for entry in group]
            longest = max(lengths)
            ids = torch.tensor([[0] * (longest - len(e.prompt)) + e.prompt for e in group], dtype=torch.long,
                               device=self.device)
            with batch.computing(self.device, ids.numel()):
                if len(group) == 1:  # alone: straight into its row, as `generate` does
                    row = group[0].row
                    logits = batch.forward(ids, KVCache(self.cache.k[:, row:row + 1], self.cache.v[:, row:row + 1]), 0)
                else:
                    pads = torch.tensor([longest - n for n in lengths], device=self.device)
                    columns = torch.arange(longest, device=self.device)
                    valid = columns[None, :] >= pads[:, None]
                    positions = (columns[None, :] - pads[:, None]).clamp(min=0)
                    padded = KVCache.allocate(batch.model.config, len(group), longest, self.device, self.dtype)
                    logits = batch.forward(ids, padded, 0, positions, batch.model._mask(valid, longest, 0))
                    for i, (entry, length) in enumerate(zip(group, lengths)):
                        for cache, written in ((self.cache.k, padded.k), (self.cache.v, padded.v)):
                            cache[:, entry.row, :, :length] = written[:, i, :, longest - length:]
            if self.logits is None:
                self.logits = torch.empty((self.max_slots, logits.shape[-1]), dtype=logits.dtype, device=self.device)
            if self.seen is None and any(e.sampling.penalizes for e in group):
                self.seen = torch.zeros(self.logits.shape, dtype=torch.bool, device=self.device)
            for i, entry in enumerate(group):
                self.logits[entry.row] = logits[i]
                if self.seen is not None:
                    seen_prompt(self.seen[entry.row], entry.prompt)
                entry.prompt = None

    def _forward(self, forward: Any) -> None:
        """Feed each active row its chosen token: logits of the next one, cache one longer."""
        n = len(self._rows)
        lengths = [r.length for r in self._rows]
        longest = max(lengths)
        tokens = torch.tensor([r.token for r in self._rows], dtype=torch.long, device=self.device)
        rows = KVCache(self.cache.k[:, :n], self.cache.v[:, :n])
        if all(length == longest for length in lengths):
            self.logits[:n] = forward.step(tokens, rows, longest)
        else:
            own = torch.tensor(lengths, device=self.device)
            columns = torch.arange(longest + 1, device=self.device)
            mask = (columns[None, :] < own[:, None]) | (columns[None, :] == longest)
            self.logits[:n] = forward.step(tokens, rows, longest, own, mask[:, None, None, :])
            short = torch.tensor([i for i, length in enumerate(lengths) if length < longest], device=self.device)
            # the scratch column's new key/value to each shorter row's own next column
            own, scratch = own[short], torch.full_like(short, longest)
            for cache in (self.cache.k, self.cache.v):
                cache[:, short, :, own] = cache[:, short, :, scratch]
        for entry in self._rows:
            entry.length += 1
        self._unfed = False

    # -- leaving

    def cancel(self, slot: int) -> None:
        entry = self._by_slot.get(slot)
        if entry is not None:
            self._remove(entry)

    def _remove(self, entry: _Request) -> None:
        last = self._rows[-1]
        if last is not entry:  # the last row moves into the freed one: rows stay 0..n-1
            row, length = entry.row, last.length
            for cache in (self.cache.k, self.cache.v):
                cache[:, row, :, :length] = cache[:, last.row, :, :length]
            self.logits[row] = self.logits[last.row]
            if self.seen is not None:
                self.seen[row] = self.seen[last.row]
            self._rows[row] = last
            last.row = row
        self._rows.pop()
        del self._by_slot[entry.slot]
        self._free_slots.append(entry.slot)
        if not self._rows:
            self._unfed = False


class _Batch:
    """What a running batch decodes with (see `TorchDecodeSlots.__init__`)."""

    def __init__(self, backend: Any, dtype: torch.dtype) -> None:
        from rung_torch.modeling import unwrap

        model = unwrap(backend.model)
        if hasattr(model, "get_base_model"):  # peft: the rung Transformer with adapters inside
            model = model.get_base_model()
        self.model, self.context = model, model.config.max_seq_len
        self.forward = forward_for(model, dtype)
        self.params = sum(p.numel() for p in model.parameters())
        # The flat forward calls no module: the training flag matters on the module path only
        # (and switching it walks every module: too slow for each step).
        self.modules = not isinstance(self.forward, FastForward)

    @contextlib.contextmanager
    def computing(self, device: torch.device, tokens: int) -> Iterator[None]:
        """`generate.computing` for `tokens` tokens, the model in eval mode on the module path."""
        mode = eval_mode(self.model) if self.modules else contextlib.nullcontext()
        with computing(device, self.params * tokens), mode:
            yield




def _similar_lengths(entries: list[_Request]) -> list[list[_Request]]:
    """Prompts in groups that prefill together: shortest first, a group closed before padding
    would make it more than twice its real tokens."""
    groups: list[list[_Request]] = []
    group: list[_Request] = []
    real = 0
    for entry in sorted(entries, key=lambda e: len(e.prompt)):
        length = len(entry.prompt)
        if group and (len(group) + 1) * length > 2 * (real + length):
            groups.append(group)
            group, real = [], 0
        group.append(entry)
        real += length
    return groups + [group] if group else groups

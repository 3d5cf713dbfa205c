"""Continuous batching for the hf backend: `HFDecodeSlots` (`rung.interfaces.DecodeSlots`).

Any transformers causal LM whose cache is a plain `DynamicCache` of full-attention layers
(Llama, Mistral without a sliding window, Qwen2, GPT-2, Phi, ...) decodes its requests as one
running batch, the way `model.generate` decodes a left-padded batch: one `DynamicCache` whose
rows are right-aligned (every row's newest token in the last column, shorter rows padded on
the left), a 2-D attention mask that hides the padding, and explicit `position_ids` (each
row's own length) so padding shifts no position. Each step is one forward pass of every row's
next token with that mask, straight through the model's own `forward`; transformers builds
the causal mask from the 2-D one as it does inside `generate`.

A request that joins is prefilled alone (batch of one, no padding: its first logits are the
ones `generate` computes) into a cache of its own, which is then left-padded to the batch's
width (or the batch to its) and stacked under the running rows. A row that finishes or is
cancelled is dropped from the cache (`index_select` on the batch), and columns no row uses
any more are cut from the left. Only joins and leaves copy the cache; a step appends one
column, as `DynamicCache.update` does in `generate`. A step returns its text before feeding
the tokens it picked back (that forward pass opens the next step, for the rows still there),
so rung serve sends the text while the model computes.

Why this layout rather than a cache per slot padded together each step: it is the layout
transformers itself decodes padded batches in (every model's mask and position handling is
exercised by `generate_batch` already), and a step copies nothing that `generate` would not.

Tokens are chosen as `generate` chooses them: the step's logits in float32, the processors of
the request's `GenerationConfig` (`HFBackend._generation_config`: repetition penalty, the
constraint of structured output or token healing, then temperature, top-k, top-p, min-p when
sampling), then argmax, or `torch.multinomial` from the request's own `torch.Generator`
(seeded with its seed: on the CPU the same draws as `generate` after `torch.manual_seed`).
A model whose generation_config.json asks for a processor these slots do not apply
(`no_repeat_ngram_size`, `suppress_tokens`, `typical_p`, ...) has its requests refused by
`accepts`, so they run through `generate`; so do requests for log-probabilities or echo.

Text is `rung.decoding.RowDecoder` (stop strings, stop ids, max_tokens), incremental.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch

from rung.decoding import RowDecoder, Sampling
from rung.decoding.slots import UNBATCHED, admit, slot_decodable
from rung.errors import RungError
from rung.records import Delta, GenerationRequest, Usage

# GenerationConfig settings whose logits processor `generate` would apply and these slots do
# not, with the value that means "off" (None, False, 0 and [] are off for every one).
_UNAPPLIED = {
    "guidance_scale": 1.0, "sequence_bias": None, "no_repeat_ngram_size": 0, "bad_words_ids": None,
    "min_length": 0, "min_new_tokens": 0, "forced_bos_token_id": None, "forced_eos_token_id": None,
    "remove_invalid_values": False, "exponential_decay_length_penalty": None, "suppress_tokens": None,
    "begin_suppress_tokens": None, "renormalize_logits": False, "watermarking_config": None,
    "typical_p": 1.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0, "top_h": None,
}


def unapplied_settings(generation_config: Any) -> list[str]:
    """The settings of `generation_config` (a model's generation_config.json) that these slots
    would not apply as `generate` does."""
    out = []
    for name, off in _UNAPPLIED.items():
        value = getattr(generation_config, name, None)
        if value is None or value is False or value == off or (isinstance(value, (list, tuple, dict)) and not value):
            continue
        out.append(name)
    return out


def batchable(model: Any) -> str | None:
    """Why `model` cannot decode in slots (None: it can): a plain DynamicCache of
    full-attention layers, a decoder-only forward that takes position_ids and a cache."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    base = _base_model(model)
    config = getattr(base, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        return "not a decoder-only transformers model"
    parameters = inspect.signature(base.forward).parameters
    if "position_ids" not in parameters:
        return "its forward takes no position_ids"
    if _cache_keyword(parameters) is None:
        return "its forward takes no cache"
    try:
        layers = DynamicCache(config=config).layers
    except Exception as exc:  # noqa: BLE001 - a config DynamicCache cannot read: not batchable here
        return f"transformers' DynamicCache does not fit its config ({exc})"
    if not layers or any(type(layer) is not DynamicLayer for layer in layers):
        return "its cache has sliding-window or other non-full-attention layers"
    return None


def _base_model(model: Any) -> Any:
    """The transformers model under torch.compile, DDP and peft wrappers (whose signature and
    config tell how to call it; the call itself goes through the wrapper)."""
    from rung_torch.modeling import unwrap

    model = unwrap(model)
    if hasattr(model, "get_base_model"):
        model = unwrap(model.get_base_model())
    return model


def _cache_keyword(parameters: Any) -> str | None:
    """The forward's cache argument: `cache` (transformers 5.x), else `past_key_values`."""
    for name in ("cache", "past_key_values"):
        if name in parameters:
            return name
    return None


@dataclass(eq=False)
class _Request:
    """What one slot holds."""

    slot: int  # the caller's handle
    decoder: RowDecoder
    sampling: Sampling
    generator: torch.Generator | None
    processors: Any  # a transformers LogitsProcessorList; empty: plain argmax or softmax
    ids: torch.Tensor | None  # (1, prompt + max_tokens): the row's tokens, for the processors
    prompt: list[int]
    length: int = 0  # tokens in the cache: the prompt and every token fed back (0: not prefilled)
    logits: torch.Tensor | None = None  # (1, vocab) float32: the next token's
    token: int = -1  # the token chosen this step, fed at the next forward


class HFDecodeSlots:
    """`max_slots` requests decoding together on one `HFBackend` (see the module docstring).

    Called from one thread only (rung serve's scheduler); each `step` holds the backend's lock,
    so a `generate` from elsewhere waits for the step to end.
    """

    def __init__(self, backend: Any, max_slots: int) -> None:
        if max_slots < 1:
            raise ValueError(f"max_slots must be at least 1, got {max_slots}")
        self.backend = backend
        self.max_slots = max_slots
        self.device = backend.device
        self.unapplied = unapplied_settings(backend._base_generation_config)
        self._rows: list[_Request] = []  # prefilled, in cache order: row i is the cache's batch row i
        self._arrived: list[_Request] = []  # added since the last step, not prefilled yet
        self._by_slot: dict[int, _Request] = {}
        self._free_slots = list(range(max_slots - 1, -1, -1))  # popped from the end: 0 first
        self._cache: Any = None  # the rows' DynamicCache, right-aligned
        self._mask: torch.Tensor | None = None  # (rows, width) long: 1 where a row has a token
        self._model: _Model | None = None  # resolved when a batch starts from empty
        self._fed = True  # False: the rows' chosen tokens wait to be fed back (at the next step)

    @property
    def free(self) -> int:
        return len(self._free_slots)

    @property
    def active(self) -> int:
        return len(self._rows) + len(self._arrived)

    def accepts(self, request: GenerationRequest) -> bool:
        # Log-probabilities and echo come from the backend's own generate, one request at a time;
        # so does every request of a model whose generation_config.json asks for a processor
        # these slots do not apply.
        return slot_decodable(request) and not self.unapplied

    # -- joining

    def add(self, request: GenerationRequest) -> int:
        refusal = UNBATCHED
        if self.unapplied:
            refusal = (f"the model's generation_config.json sets {', '.join(self.unapplied)}, which batch slots "
                       "do not apply: use backend.generate")
        prompt, sampling = admit(self, request, refusal)
        config = self.backend._generation_config(sampling)
        guide = sampling.constraint.guide(sampling.stop_ids, sampling.max_tokens) if sampling.constraint else None
        processors = _processors(config, guide, len(prompt))
        ids = None
        if processors:
            ids = torch.zeros((1, len(prompt) + sampling.max_tokens), dtype=torch.long, device=self.device)
            ids[0, :len(prompt)] = torch.tensor(prompt, dtype=torch.long)
        generator = None
        if not sampling.greedy:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(sampling.seed) if sampling.seed is not None else generator.seed()
        slot = self._free_slots.pop()
        decoder = RowDecoder(self.backend.tokenizer, sampling, len(prompt), incremental=True)
        entry = _Request(slot, decoder, sampling, generator, processors, ids, prompt)
        self._arrived.append(entry)
        self._by_slot[slot] = entry
        return slot

    # -- the step

    def step(self) -> list[tuple[int, Delta]]:
        if not self.active:
            return []
        from rung_torch.modeling import eval_mode

        with self.backend._lock:
            if self._model is None or not self._rows:
                self._model = _Model(self.backend.model)
            model = self._model
            with torch.no_grad(), eval_mode(model.module):
                if not self._fed and self._rows:  # last step's tokens (rows cancelled since are gone)
                    self._forward()
                self._fed = True
                while self._arrived:  # each one leaves `_arrived` once it is a row of the cache
                    self._prefill(self._arrived[0])
                    self._arrived.pop(0)
                chosen = self._choose()
                out: list[tuple[int, Delta]] = []
                finished: list[_Request] = []
                name = self.backend.options.model
                for entry, token in zip(self._rows, chosen):
                    decoder = entry.decoder
                    text = decoder.push(token)
                    if decoder.done:
                        usage = Usage(prompt_tokens=decoder.prompt_tokens, completion_tokens=decoder.completion_tokens)
                        out.append((entry.slot, Delta(text, decoder.finish_reason, usage, name)))
                        finished.append(entry)
                    else:
                        entry.token = token
                        if text:
                            out.append((entry.slot, Delta(text, model=name)))
                self._remove(finished)
                # The chosen tokens are fed back at the start of the next step, so this step's
                # text reaches its clients while the model computes (as rung_torch.batching does).
                self._fed = not self._rows
        return out

    def _prefill(self, entry: _Request) -> None:
        """`entry`'s prompt through the model alone (as `generate` prefills one row), its cache
        then stacked under the running rows."""
        from transformers import DynamicCache

        model = self._model
        length = len(entry.prompt)
        ids = torch.tensor([entry.prompt], dtype=torch.long, device=self.device)
        cache = DynamicCache(config=model.config)
        positions = torch.arange(length, device=self.device)[None, :]
        entry.logits = model.forward(ids, torch.ones_like(ids), positions, cache)
        entry.length = length
        layers = cache.layers
        if any(getattr(layer, "keys", None) is None or layer.keys.shape[-2] != length for layer in layers):
            raise RungError(f"{type(model.base).__name__}'s cache does not hold one column per prompt token: "
                            "its requests cannot decode in batch slots")
        if self._cache is None:
            self._cache, self._mask = cache, torch.ones((1, length), dtype=torch.long, device=self.device)
            self._rows = [entry]
            return
        width = self._mask.shape[1]
        grow = max(0, length - width)  # the running rows' padding, when the new row is longer
        pad = width + grow - length  # the new row's
        for layer, new in zip(self._cache.layers, layers):
            keys, values = layer.keys, layer.values
            if grow:
                keys, values = _pad_left(keys, grow), _pad_left(values, grow)
            layer.keys = torch.cat([keys, _pad_left(new.keys, pad)])
            layer.values = torch.cat([values, _pad_left(new.values, pad)])
        mask = torch.nn.functional.pad(self._mask, (grow, 0))
        row = torch.nn.functional.pad(torch.ones((1, length), dtype=torch.long, device=self.device), (pad, 0))
        self._mask = torch.cat([mask, row])
        self._rows.append(entry)

    def _choose(self) -> list[int]:
        """Each row's next token, as `generate` picks it from the row's logits."""
        chosen: list[int | None] = [None] * len(self._rows)
        plain = [i for i, r in enumerate(self._rows) if not r.processors and r.generator is None]
        if plain:  # greedy rows with nothing to process: one argmax
            logits = torch.cat([self._rows[i].logits for i in plain])
            for i, token in zip(plain, logits.argmax(-1).tolist()):
                chosen[i] = token
        for i, entry in enumerate(self._rows):
            if chosen[i] is not None:
                continue
            scores = entry.logits
            if entry.processors:
                scores = entry.processors(entry.ids[:, :entry.decoder.prompt_tokens + entry.decoder.generated], scores)
            if entry.generator is None:
                chosen[i] = int(scores.argmax(-1))
            else:
                probs = torch.nn.functional.softmax(scores, dim=-1)
                chosen[i] = int(torch.multinomial(probs, num_samples=1, generator=entry.generator))
        return chosen  # type: ignore[return-value]

    def _forward(self) -> None:
        """Feed each row its chosen token: logits of the next one, every row one longer."""
        n = len(self._rows)
        tokens = torch.tensor([[r.token] for r in self._rows], dtype=torch.long, device=self.device)
        positions = torch.tensor([[r.length] for r in self._rows], dtype=torch.long, device=self.device)
        self._mask = torch.cat([self._mask, torch.ones((n, 1), dtype=torch.long, device=self.device)], dim=1)
        logits = self._model.forward(tokens, self._mask, positions, self._cache)
        for i, entry in enumerate(self._rows):
            if entry.ids is not None:
                entry.ids[0, entry.decoder.prompt_tokens + entry.decoder.generated - 1] = entry.token
            entry.logits = logits[i:i + 1]
            entry.length += 1

    # -- leaving

    def cancel(self, slot: int) -> None:
        entry = self._by_slot.get(slot)
        if entry is None:
            return
        if any(e is entry for e in self._arrived):
            self._arrived = [e for e in self._arrived if e is not entry]
            self._release(entry)
        else:
            self._remove([entry])

    def _remove(self, entries: list[_Request]) -> None:
        """Drop `entries`' rows from the cache, and the columns no row left uses."""
        if not entries:
            return
        for entry in entries:
            self._release(entry)
        gone = {id(e) for e in entries}
        keep = [i for i, r in enumerate(self._rows) if id(r) not in gone]
        self._rows = [self._rows[i] for i in keep]
        if not self._rows:
            self._cache = self._mask = None
            return
        width = self._mask.shape[1]
        start = width - max(r.length for r in self._rows)  # padding every row left has
        index = torch.tensor(keep, dtype=torch.long, device=self.device)
        for layer in self._cache.layers:
            rows = index.to(layer.keys.device)
            layer.keys = layer.keys.index_select(0, rows)[:, :, start:]
            layer.values = layer.values.index_select(0, rows)[:, :, start:]
        self._mask = self._mask.index_select(0, index)[:, start:]

    def _release(self, entry: _Request) -> None:
        del self._by_slot[entry.slot]
        self._free_slots.append(entry.slot)


class _Model:
    """How a running batch calls the model: the module (a peft or compile wrapper included),
    its config, and the forward's keywords (resolved when a batch starts from empty)."""

    def __init__(self, module: Any) -> None:
        self.module = module
        self.base = _base_model(module)
        self.config = self.base.config
        parameters = inspect.signature(self.base.forward).parameters
        self.cache_keyword = _cache_keyword(parameters)
        self.keep_last = "logits_to_keep" in parameters

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any) -> torch.Tensor:
        """The last position's logits of each row, in float32 (as `generate` takes them)."""
        kwargs: dict[str, Any] = {self.cache_keyword: cache, "use_cache": True}
        if self.keep_last:
            kwargs["logits_to_keep"] = 1
        out = self.module(input_ids=ids, attention_mask=mask, position_ids=positions, **kwargs)
        return out.logits[:, -1].to(dtype=torch.float32, copy=True)


def _pad_left(states: torch.Tensor, columns: int) -> torch.Tensor:
    """(batch, heads, length, dim) with `columns` zero columns before the first."""
    return torch.nn.functional.pad(states, (0, 0, columns, 0)) if columns else states


def _processors(config: Any, guide: Any, width: int) -> Any:
    """The logits processors `generate` builds from `config` (a request's GenerationConfig),
    in its order: repetition penalty, the constraint (a custom processor), then the sampling
    warpers; `width`: the prompt's length (where the constraint's guide starts reading)."""
    from transformers import (
        LogitsProcessorList,
        MinPLogitsWarper,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    out: list[Any] = []
    if config.repetition_penalty is not None and config.repetition_penalty != 1.0:
        out.append(RepetitionPenaltyLogitsProcessor(config.repetition_penalty))
    if guide is not None:
        from rung_torch.picking import ConstrainedLogits

        out.append(ConstrainedLogits([guide], width))
    if config.do_sample:
        if config.temperature is not None and config.temperature != 1.0:
            out.append(TemperatureLogitsWarper(config.temperature))
        if config.top_k is not None and config.top_k != 0:
            out.append(TopKLogitsWarper(top_k=config.top_k, min_tokens_to_keep=1))
        if config.top_p is not None and config.top_p < 1.0:
            out.append(TopPLogitsWarper(top_p=config.top_p, min_tokens_to_keep=1))
        if config.min_p is not None:
            out.append(MinPLogitsWarper(min_p=config.min_p, min_tokens_to_keep=1))
    return LogitsProcessorList(out)

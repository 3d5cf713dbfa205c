"""Text generation for rung's Transformer: a static KV cache, prefill, then one token a step.

`generate_tokens` is the whole algorithm. Prompts of different lengths are left-padded into
one batch: every row writes its keys and values at the same cache slot each step, a mask
hides the padding, and rotary positions are counted per row from its first real token, so a
row decodes exactly as it would alone. Each step picks the next token of every row (greedy,
or sampled with temperature, top-k and top-p from the row's own seeded `torch.Generator`)
and hands it to that row's `rung.decoding.RowDecoder`, which turns tokens into text: incrementally when
streaming or watching for stop strings (never half a UTF-8 character, never part of a stop
string), once at the end otherwise.

Log-probabilities, only when a row asks (`Sampling.logprobs`): each step's log-softmax of the
logits that chose the tokens (the model's distribution, before temperature, top-k and top-p)
gives the chosen token's entry and the k largest; with `Sampling.echo` the prefill computes the
logits of every prompt position and scores the prompt the same way. A step of rows that ask for
none does no extra work.

Structured output (`Sampling.constraint`): each constrained row has a `TokenGuide`
(`rung.decoding.structured`); before each pick `constrain` leaves only the ids the guide
allows (the logprobs still come from the model's own logits), after it the guide advances.
A step of unconstrained rows does no extra work.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from rung.decoding import RowDecoder, Sampling, context_error  # noqa: F401  (re-exported)
from rung.decoding.logprobs import LogprobRecords, top_count
from rung.decoding.structured import TokenGuide, start_guides
from rung.errors import RungError
from rung.records import TokenLogprob
from rung_torch.model import KVCache


def choose(logits: torch.Tensor, rows: Sequence[Sampling],
           generators: Sequence[torch.Generator | None], uniforms: torch.Tensor | None = None) -> torch.Tensor:
    """The next token of each row from its last logits (batch, vocab).

    Rows that sample alike are filtered together (temperature, top-k, top-p as one batch of
    ops: online RL samples many rows at once). Each row then draws one uniform number from its
    own generator and takes the token where it falls in the row's cumulative distribution, so a
    row picks what it would pick alone (and `torch.multinomial`'s per-row cost, an exponential
    draw for every token of the vocabulary, is not paid once per row).

    `uniforms` (batch,): each row's number drawn already (a caller that drew many steps' worth
    at once); the generators are then not used.
    """
    chosen = logits.argmax(dim=-1)
    groups: dict[tuple, list[int]] = {}
    for i, sampling in enumerate(rows):
        if not sampling.greedy:
            groups.setdefault((sampling.temperature, sampling.top_k, sampling.top_p), []).append(i)
    for (temperature, top_k, top_p), members in groups.items():
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


@dataclass
class Event:
    """A piece of text of row `row` (and, when the row is done, why)."""

    row: int
    text: str
    finish_reason: str | None = None
    logprobs: tuple[TokenLogprob, ...] | None = None  # of the tokens whose text this event shows


class FastForward:
    """The model's forward pass for generation, as a flat sequence of tensor ops.

    Holds the weights in the decoding dtype with the projections that read the same input
    fused (q, k and v in one matrix; gate and up in another), so a decoding step of an L-layer
    model is 4L + 1 matrix products and no module calls. The copies are rebuilt whenever a
    parameter changes (training updates them in place: `_version` counts that).
    """

    def __init__(self, model: Any, dtype: torch.dtype) -> None:
        c = model.config
        self.config, self.dtype = c, dtype
        self.key = _weights_key(model, dtype)
        self.n_heads, self.n_kv, self.head_dim = c.n_heads, c.kv_heads, c.head_dim
        self.group = c.n_heads // c.kv_heads
        self.eps = c.norm_eps
        self.q_size, self.kv_size = c.n_heads * c.head_dim, c.kv_heads * c.head_dim
        with torch.no_grad():
            cast = lambda t: t.detach().to(dtype)  # noqa: E731
            # Matrices are stored (in, out), contiguous: `x @ w` then reads the weights in the
            # order it uses them, about twice as fast as F.linear for one row on a CPU.
            t = lambda *ws: torch.cat([w.detach() for w in ws]).to(dtype).t().contiguous()  # noqa: E731
            self.embed = cast(model.model.embed_tokens.weight)
            self.head = t(model.lm_head.weight)
            self.norm = cast(model.model.norm.weight)
            self.layers = []
            for layer in model.model.layers:
                a, m = layer.self_attn, layer.mlp
                self.layers.append((
                    cast(layer.input_layernorm.weight),
                    t(a.q_proj.weight, a.k_proj.weight, a.v_proj.weight),
                    t(a.o_proj.weight),
                    cast(layer.post_attention_layernorm.weight),
                    t(m.gate_proj.weight, m.up_proj.weight),
                    t(m.down_proj.weight),
                ))
            # cos, and sin with the sign of "rotate half" folded in: x*cos + roll(x)*sin_signed.
            half = c.head_dim // 2
            self.cos = model.rope_cos.to(dtype)
            self.sin = torch.cat([-model.rope_sin[:, :half], model.rope_sin[:, half:]], dim=-1).to(dtype)

    @classmethod
    def of(cls, model: Any, dtype: torch.dtype) -> "FastForward":
        """The cached instance for `model`, rebuilt if its weights changed since."""
        cached = model.__dict__.get("_rung_fast_forward")
        if cached is None or cached.key != _weights_key(model, dtype):
            cached = cls(model, dtype)
            model.__dict__["_rung_fast_forward"] = cached
        return cached

    def __call__(self, tokens: torch.Tensor, cache: KVCache, start: int,
                 positions: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                 every_position: bool = False) -> torch.Tensor:
        """Logits (B, vocab) of the last of `tokens` (B, T), writing keys/values at `start`;
        with `every_position`, the logits (B, T, vocab) of every position (echo's prompt scores).

        `positions` (B, T): rotary positions (default start + arange(T)); `mask` (B, 1, T,
        start + T) bool: True where a query may look (default: causal).
        """
        B, T = tokens.shape
        end = start + T
        nh, nkv, hd, group = self.n_heads, self.n_kv, self.head_dim, self.group
        if positions is None:
            cos, sin = self.cos[start:end, None, :], self.sin[start:end, None, :]  # (T, 1, hd)
        else:
            cos, sin = self.cos[positions].unsqueeze(2), self.sin[positions].unsqueeze(2)  # (B, T, 1, hd)
        x = F.embedding(tokens, self.embed)
        causal = mask is None and T > 1
        last = len(self.layers) - 1
        for i, (w_in, w_qkv, w_o, w_post, w_gu, w_down) in enumerate(self.layers):
            h = F.rms_norm(x, (x.shape[-1],), w_in, self.eps)
            qkv = h @ w_qkv
            qk = qkv[..., :self.q_size + self.kv_size].view(B, T, nh + nkv, hd)
            qk = torch.addcmul(qk * cos, qk.roll(hd // 2, dims=-1), sin)
            k_cache, v_cache = cache.k[i], cache.v[i]
            k_cache[:, :, start:end] = qk[:, :, nh:].transpose(1, 2)
            v_cache[:, :, start:end] = qkv[..., self.q_size + self.kv_size:].view(B, T, nkv, hd).transpose(1, 2)
            k, v = k_cache[:, :, :end], v_cache[:, :, :end]
            if T == 1:
                # Fold the query heads that share a key/value head into the query axis.
                q = qk[:, :, :nh].reshape(B, nkv, group, hd)
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).reshape(B, 1, nh * hd)
            else:
                q = qk[:, :, :nh].transpose(1, 2)
                if group > 1:
                    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
                if i == last and not every_position:  # past the last attention only the last position matters
                    y, x = y[:, :, -1:], x[:, -1:]
                y = y.transpose(1, 2).reshape(B, y.shape[2], nh * hd)
            x = x + y @ w_o
            h = F.rms_norm(x, (x.shape[-1],), w_post, self.eps)
            gate, up = (h @ w_gu).chunk(2, dim=-1)
            x = x + (F.silu(gate) * up) @ w_down
        if every_position:
            return F.rms_norm(x, (x.shape[-1],), self.norm, self.eps) @ self.head
        return F.rms_norm(x[:, -1], (x.shape[-1],), self.norm, self.eps) @ self.head

    def step(self, tokens: torch.Tensor, cache: KVCache, pos: int,
             positions: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        """One decoding step: logits (B, vocab) after `tokens` (B,), written at cache slot `pos`.

        The same computation as `__call__` with one token per row, on 2-D (B, dim) activations
        so each residual add folds into its matrix product (`addmm`).
        """
        B = tokens.shape[0]
        nh, nkv, hd, group = self.n_heads, self.n_kv, self.head_dim, self.group
        qk_size, dim = self.q_size + self.kv_size, self.embed.shape[1]
        if positions is None:
            cos, sin = self.cos[pos], self.sin[pos]  # (hd,)
        else:
            cos, sin = self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)  # (B, 1, hd)
        x = F.embedding(tokens, self.embed)
        for i, (w_in, w_qkv, w_o, w_post, w_gu, w_down) in enumerate(self.layers):
            qkv = F.rms_norm(x, (dim,), w_in, self.eps) @ w_qkv
            qk = qkv[:, :qk_size].view(B, nh + nkv, hd)
            qk = torch.addcmul(qk * cos, qk.roll(hd // 2, dims=-1), sin)
            k_cache, v_cache = cache.k[i], cache.v[i]
            k_cache[:, :, pos] = qk[:, nh:]
            v_cache[:, :, pos] = qkv[:, qk_size:].view(B, nkv, hd)
            q = qk[:, :nh].view(B, nkv, group, hd)
            y = F.scaled_dot_product_attention(q, k_cache[:, :, :pos + 1], v_cache[:, :, :pos + 1], attn_mask=mask)
            x = torch.addmm(x, y.view(B, nh * hd), w_o)
            gate, up = (F.rms_norm(x, (dim,), w_post, self.eps) @ w_gu).chunk(2, dim=-1)
            x = torch.addmm(x, F.silu(gate).mul_(up), w_down)
        return F.rms_norm(x, (dim,), self.norm, self.eps) @ self.head


class ModuleForward:
    """The same call as `FastForward`, through the modules: for models whose layers were
    replaced or wrapped (LoRA adapters, quantised linears), which the flat path cannot see."""

    def __init__(self, model: Any, dtype: torch.dtype) -> None:
        self.model = model
        param = next(model.parameters())
        self.autocast = (
            torch.autocast(param.device.type, dtype=dtype) if dtype != param.dtype else contextlib.nullcontext()
        )

    def __call__(self, tokens, cache, start, positions=None, mask=None, every_position=False):
        with self.autocast:
            logits = self.model(tokens, attention_mask=mask, position_ids=positions, cache=cache, start=start,
                                last_only=not every_position)
        return logits if every_position else logits[:, -1]

    def step(self, tokens, cache, pos, positions=None, mask=None):
        return self(tokens[:, None], cache, pos, None if positions is None else positions[:, None], mask)


def forward_for(model: Any, dtype: torch.dtype):
    """The fastest forward pass that computes exactly what `model` computes."""
    from torch import nn

    plain = all(
        type(module) is nn.Linear
        for layer in model.model.layers
        for module in (*layer.self_attn.children(), *layer.mlp.children())
    ) and type(model.lm_head) is nn.Linear and type(model.model.embed_tokens) is nn.Embedding
    return FastForward.of(model, dtype) if plain else ModuleForward(model, dtype)


def _weights_key(model: Any, dtype: torch.dtype) -> tuple:
    return (dtype,) + tuple((p.data_ptr(), p._version) for p in model.parameters())


# Below this many multiply-adds a CPU step runs on one thread: a decoding step of a small model
# gains little from more, and on a busy machine (more runnable threads than cores) waiting for
# a descheduled OpenMP worker made steps 30x slower. Larger steps use torch's thread count.
SINGLE_THREAD_WORK = 2**28


@contextlib.contextmanager
def computing(device: torch.device, work: int) -> Iterator[None]:
    """Inference mode, and one CPU thread for a step of `work` multiply-adds if it is small.

    Any autocast around the call is switched off: generation decodes in its own precision
    (an evaluator that samples mid-training runs inside the engine's training autocast).
    """
    threads = torch.get_num_threads()
    own_precision = torch.autocast(device.type, enabled=False)
    if device.type != "cpu" or threads == 1 or work > SINGLE_THREAD_WORK:
        with torch.inference_mode(), own_precision:
            yield
        return
    torch.set_num_threads(1)
    try:
        with torch.inference_mode(), own_precision:
            yield
    finally:
        torch.set_num_threads(threads)


def generate_tokens(
    model: Any,
    prompts: Sequence[Sequence[int]],
    rows: Sequence[Sampling],
    decoders: Sequence[RowDecoder],
    device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> Iterator[Event]:
    """Decode every prompt to the end; yield each row's text as it becomes showable.

    The weights and the cache are in `dtype` (float32 on the CPU: see `resolve_precision`).
    """
    config = model.config
    context = config.max_seq_len
    lengths = [len(p) for p in prompts]
    for length, sampling in zip(lengths, rows):
        if length == 0:
            raise RungError("the prompt encodes to no tokens: give some text to continue")
        if length + sampling.max_tokens > context:  # the backend checked already (rung.decoding)
            raise context_error(length, sampling.max_tokens, context)
    B, T = len(prompts), max(lengths)
    pads = [T - n for n in lengths]
    padded = any(pads)
    # Cache slots: a left-padded row may run past `context` slots, as its positions start later.
    total = min(context + max(pads), T + max(r.max_tokens for r in rows))

    generators: list[torch.Generator | None] = []
    for sampling in rows:
        if sampling.greedy:
            generators.append(None)
            continue
        g = torch.Generator(device=device)
        g.manual_seed(sampling.seed) if sampling.seed is not None else g.seed()
        generators.append(g)

    ids = torch.tensor([[0] * pad + list(p) for pad, p in zip(pads, prompts)], dtype=torch.long, device=device)
    positions = mask = None
    if padded:
        pad_t = torch.tensor(pads, device=device)
        slots = torch.arange(total, device=device)
        valid = slots[None, :] >= pad_t[:, None]  # (B, total): which cache slots hold real tokens
        # The rotary position of each slot (clamped: a row past its context is finished already).
        positions = (slots[None, :] - pad_t[:, None]).clamp(0, context - 1)
        mask = model._mask(valid[:, :T], T, 0)
    # Compute runs under inference mode and, when small, on one CPU thread; neither is left on
    # while the caller has the text (a stream's consumer runs between our steps).
    n_params = sum(p.numel() for p in model.parameters())
    top = top_count(rows)  # None: no row asks for log-probabilities (no extra work at all)
    records = LogprobRecords(decoders[0].tokenizer) if top is not None else None
    echo = any(r.scores_prompt for r in rows)
    guides = start_guides(rows)  # None: no row is constrained (no extra work)
    with computing(device, n_params * B * T):
        forward = forward_for(model, dtype)
        cache = KVCache.allocate(config, B, total, device, dtype)
        logits = forward(ids, cache, 0, None if positions is None else positions[:, :T], mask, every_position=echo)
        if echo:
            _score_prompts(logits, ids, pads, rows, decoders, records)
            logits = logits[:, -1]
    for i, decoder in enumerate(decoders):
        if decoder.done:  # max_tokens 0 (echo): the prompt was all there was to do
            yield Event(i, "", decoder.finish_reason, decoder.take_logprobs())
    if all(d.done for d in decoders):
        return
    pos = T
    while True:
        with computing(device, n_params * B):
            if guides is None:
                next_tokens = choose(logits, rows, generators)
            else:
                next_tokens = choose(constrain(logits, guides, [d.done for d in decoders]), rows, generators)
            tokens = next_tokens.tolist()
            entries = _step_logprobs(logits, next_tokens, tokens, rows, decoders, top, records) if top is not None \
                else None
        for i, token in enumerate(tokens):
            decoder = decoders[i]
            if decoder.done:
                continue
            text = decoder.push(token, entries[i] if entries is not None else None)
            if guides is not None and guides[i] is not None and not decoder.done:
                guides[i].advance(token)
                if guides[i].finished:  # complete JSON and no stop id to end it
                    text += decoder.finish("stop")
            if not decoder.done and (pos + 1 - pads[i] >= context or pos + 1 >= total):
                text += decoder.finish("length")  # prompt + answer fill the context
            if text or decoder.done:
                yield Event(i, text, decoder.finish_reason, decoder.take_logprobs())
        if all(d.done for d in decoders):
            return
        step_positions = None
        if padded:
            step_positions, mask = positions[:, pos], valid[:, None, None, :pos + 1]
        with computing(device, n_params * B):
            logits = forward.step(next_tokens, cache, pos, step_positions, mask)
        pos += 1


def _step_logprobs(logits: torch.Tensor, chosen: torch.Tensor, tokens: list[int], rows: Sequence[Sampling],
                   decoders: Sequence[RowDecoder], top: int,
                   records: LogprobRecords) -> list[TokenLogprob | None]:
    """Each asking row's record of the token it chose from `logits` (B, vocab)."""
    logprobs = logits.float().log_softmax(-1)
    own = logprobs.gather(1, chosen[:, None])[:, 0].tolist()
    top_values = top_ids = None
    if top > 0:
        values, indices = logprobs.topk(min(top, logprobs.shape[-1]), dim=-1)
        top_values, top_ids = values.tolist(), indices.tolist()
    out: list[TokenLogprob | None] = []
    for i, (sampling, decoder) in enumerate(zip(rows, decoders)):
        if sampling.logprobs is None or decoder.done:
            out.append(None)
            continue
        k = sampling.logprobs
        out.append(records.token(tokens[i], own[i], top_ids[i][:k] if k else (), top_values[i][:k] if k else ()))
    return out


def _score_prompts(logits: torch.Tensor, ids: torch.Tensor, pads: Sequence[int], rows: Sequence[Sampling],
                   decoders: Sequence[RowDecoder], records: LogprobRecords | None) -> None:
    """Echo: each asking row's prompt tokens scored by the prefill's logits (B, T, vocab) of the
    positions before them (a left-padded row's real tokens start at its pad)."""
    for i, sampling in enumerate(rows):
        if not sampling.scores_prompt or records is None:
            continue
        prompt = ids[i, pads[i]:]
        logprobs = logits[i, pads[i]:-1].float().log_softmax(-1)  # position j predicts prompt[j + 1]
        own = logprobs.gather(1, prompt[1:, None])[:, 0].tolist()
        top_ids = top_values = None
        if sampling.logprobs:
            values, indices = logprobs.topk(min(sampling.logprobs, logprobs.shape[-1]), dim=-1)
            top_ids, top_values = indices.tolist(), values.tolist()
        decoders[i].prompt_logprobs = records.prompt(prompt.tolist(), own, top_ids, top_values)

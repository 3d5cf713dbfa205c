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
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F

from rung.decoding import RowDecoder, Sampling, context_error  # noqa: F401  (re-exported)
from rung.decoding.logprobs import LogprobRecords, top_count
from rung.decoding.structured import start_guides
from rung.errors import RungError
from rung.records import TokenLogprob
from rung_torch.model import KVCache
from rung_torch.packed_weights import pack
from rung_torch.picking import choose, constrain, seen_tokens


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
    model is 4L + 1 matrix products and no module calls. Each RMSNorm's weight, and its
    sqrt(dim), is folded into the rows of the matrix that reads its output, so a norm is
    `unit_norm`: x / sqrt(sum(x^2) + dim * eps), four cheap ops (torch's own rms_norm makes
    copies of its input on the CPU, and cost a third of a tiny model's step). The copies are
    rebuilt whenever a parameter changes (training updates them in place: `_version` counts that).
    """

    def __init__(self, model: Any, dtype: torch.dtype) -> None:
        c = model.config
        self.config, self.dtype = c, dtype
        self.key = _weights_key(model, dtype)
        self.n_params = sum(p.numel() for p in model.parameters())  # for `computing`'s thread rule
        self.n_heads, self.n_kv, self.head_dim = c.n_heads, c.kv_heads, c.head_dim
        self.group = c.n_heads // c.kv_heads
        self.dim_eps = c.dim * c.norm_eps  # unit_norm's: sum(x^2) + dim * eps = dim * (mean(x^2) + eps)
        self.q_size, self.kv_size = c.n_heads * c.head_dim, c.kv_heads * c.head_dim
        with torch.no_grad():
            cast = lambda t: t.detach().to(dtype)  # noqa: E731
            # Matrices are stored (in, out), contiguous: `x @ w` then reads the weights in the
            # order it uses them, about twice as fast as F.linear for one row on a CPU.
            # `norm`: the weight of the RMSNorm before the matrix, folded into its rows (in fp32)
            # with the norm's sqrt(dim) (`unit_norm` leaves it out).
            def t(*ws, norm=None):
                w = torch.cat([w.detach() for w in ws]).float().t()
                if norm is not None:
                    w = w * (norm.detach().float()[:, None] * math.sqrt(c.dim))
                return w.to(dtype).contiguous()

            self.embed = cast(model.model.embed_tokens.weight)
            matrices = []
            for layer in model.model.layers:
                a, m = layer.self_attn, layer.mlp
                matrices += [
                    t(a.q_proj.weight, a.k_proj.weight, a.v_proj.weight, norm=layer.input_layernorm.weight),
                    t(a.o_proj.weight),
                    t(m.gate_proj.weight, m.up_proj.weight, norm=layer.post_attention_layernorm.weight),
                    t(m.down_proj.weight),
                ]
            matrices.append(t(model.lm_head.weight, norm=model.model.norm.weight))
            # In the order a step reads them, in one buffer on huge pages (`packed_weights`).
            matrices = pack(matrices)
            self.head = matrices.pop()
            self.layers = [tuple(matrices[i:i + 4]) for i in range(0, len(matrices), 4)]
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
        for i, (w_qkv, w_o, w_gu, w_down) in enumerate(self.layers):
            qkv = unit_norm(x, self.dim_eps) @ w_qkv
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
                y = y.transpose(1, 2).reshape(B, T, nh * hd)
                if i == last:
                    # Past the last attention only the last position feeds the next token: it is
                    # computed alone (one-row matrix products round unlike the rows of a taller
                    # one), the same whether or not the prompt is scored too.
                    following = unit_norm(self._tail(x[:, -1], y[:, -1], w_o, w_gu, w_down), self.dim_eps) @ self.head
                    if not every_position:
                        return following
                    logits = unit_norm(self._tail(x, y, w_o, w_gu, w_down), self.dim_eps) @ self.head
                    logits[:, -1] = following
                    return logits
            x = self._tail(x, y, w_o, w_gu, w_down)
        if every_position:
            return unit_norm(x, self.dim_eps) @ self.head
        return unit_norm(x[:, -1], self.dim_eps) @ self.head

    def _tail(self, x: torch.Tensor, y: torch.Tensor, w_o: torch.Tensor, w_gu: torch.Tensor,
              w_down: torch.Tensor) -> torch.Tensor:
        """A layer after its attention: the residual stream `x` plus the attention's output `y`
        projected, then plus the MLP of that."""
        x = x + y @ w_o
        gate, up = (unit_norm(x, self.dim_eps) @ w_gu).chunk(2, dim=-1)
        return x + (F.silu(gate) * up) @ w_down

    def step(self, tokens: torch.Tensor, cache: KVCache, pos: int,
             positions: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        """One decoding step: logits (B, vocab) after `tokens` (B,), written at cache slot `pos`
        (`decode_step`, TorchScript-compiled when this torch can: see `compiled_decode_step`)."""
        if positions is None:
            cos, sin = self.cos[pos], self.sin[pos]  # (hd,)
        else:
            cos, sin = self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)  # (B, 1, hd)
        return compiled_decode_step()(tokens, self.embed, self.layers, self.head, cache.k, cache.v, cos, sin, pos,
                                      self.n_heads, self.n_kv, self.head_dim, self.dim_eps, mask)


def unit_norm(x: torch.Tensor, dim_eps: float) -> torch.Tensor:
    """RMSNorm without its weight and its sqrt(dim) (`FastForward` folds both into the next
    matrix): x / sqrt(sum(x^2) + dim * eps) over the last axis, in x's dtype."""
    return x * torch.rsqrt(x.square().sum(-1, keepdim=True).add_(dim_eps))


def decode_step(tokens: torch.Tensor, embed: torch.Tensor, layers: list[tuple[torch.Tensor, torch.Tensor,
                torch.Tensor, torch.Tensor]], head: torch.Tensor, k_all: torch.Tensor, v_all: torch.Tensor,
                cos: torch.Tensor, sin: torch.Tensor, pos: int, n_heads: int, n_kv: int, head_dim: int,
                dim_eps: float, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """`FastForward.__call__`'s computation for one token per row, on 2-D (B, dim) activations
    so each residual add folds into its matrix product (`addmm`): logits (B, vocab).

    `layers`: FastForward's (qkv, o, gate+up, down) matrices, (in, out), norm weights folded in;
    `k_all`/`v_all`: the cache (layers, B, kv_heads, length, head_dim), written at slot `pos`;
    `cos`/`sin`: the rotary rows of this step's positions ((hd,) or (B, 1, hd)); `dim_eps`: the
    norms' dim * eps (`unit_norm`); `mask` (B, 1, 1, pos + 1) bool or None. Written in the subset
    of Python TorchScript compiles.
    """
    B = tokens.shape[0]
    group = n_heads // n_kv
    q_size = n_heads * head_dim
    qk_size = q_size + n_kv * head_dim
    end = pos + 1
    x = F.embedding(tokens, embed)
    for i, (w_qkv, w_o, w_gu, w_down) in enumerate(layers):
        qkv = torch.mm(unit_norm(x, dim_eps), w_qkv)
        qk = qkv[:, :qk_size].view(B, n_heads + n_kv, head_dim)
        qk = torch.addcmul(qk * cos, qk.roll(head_dim // 2, -1), sin)
        k_cache, v_cache = k_all[i], v_all[i]
        k_cache.select(2, pos).copy_(qk[:, n_heads:])
        v_cache.select(2, pos).copy_(qkv[:, qk_size:].view(B, n_kv, head_dim))
        # The query heads that share a key/value head folded into the query axis: no copy of k or v.
        q = qk[:, :n_heads].view(B, n_kv, group, head_dim)
        y = F.scaled_dot_product_attention(q, k_cache.narrow(2, 0, end), v_cache.narrow(2, 0, end), attn_mask=mask)
        x = torch.addmm(x, y.view(B, q_size), w_o)
        gate_up = torch.mm(unit_norm(x, dim_eps), w_gu)
        half = gate_up.shape[1] // 2
        x = torch.addmm(x, F.silu(gate_up[:, :half]).mul_(gate_up[:, half:]), w_down)
    return torch.mm(unit_norm(x, dim_eps), head)


_COMPILED_STEP: list = []


def compiled_decode_step():
    """`decode_step` compiled by TorchScript once per process (~20 ms), which runs its ~16 ops a
    layer without Python between them: a step of a small model is mostly that per-op cost. The
    same ops either way; plain `decode_step` where this torch cannot script it."""
    if not _COMPILED_STEP:
        import warnings

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # TorchScript's deprecation notice
                _COMPILED_STEP.append(torch.jit.script(decode_step))
        except Exception:  # noqa: BLE001  (no TorchScript in this torch: the same function, eager)
            _COMPILED_STEP.append(decode_step)
    return _COMPILED_STEP[0]


class ModuleForward:
    """The same call as `FastForward`, through the modules: for models whose layers were
    replaced or wrapped (LoRA adapters, quantised linears), which the flat path cannot see."""

    def __init__(self, model: Any, dtype: torch.dtype) -> None:
        self.model = model
        self.n_params = sum(p.numel() for p in model.parameters())
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
    """What FastForward's copies were made from: each weight it reads (looked up afresh, so a
    replaced parameter counts) and its in-place version. Cheaper than walking every module's
    parameters, which cost more than a tiny model's decoding step at every request."""
    weights = [model.model.embed_tokens.weight, model.lm_head.weight, model.model.norm.weight]
    for layer in model.model.layers:
        a, m = layer.self_attn, layer.mlp
        weights += [layer.input_layernorm.weight, a.q_proj.weight, a.k_proj.weight, a.v_proj.weight,
                    a.o_proj.weight, layer.post_attention_layernorm.weight, m.gate_proj.weight,
                    m.up_proj.weight, m.down_proj.weight]
    return (dtype,) + tuple((w.data_ptr(), w._version) for w in weights)


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
    # (an autocast context costs more than a tiny model's argmax: made only when one is on)
    own_precision = (torch.autocast(device.type, enabled=False) if torch.is_autocast_enabled(device.type)
                     else contextlib.nullcontext())
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
    consumer_computes: bool = True,
) -> Iterator[Event]:
    """Decode every prompt to the end; yield each row's text as it becomes showable.

    The weights and the cache are in `dtype` (float32 on the CPU: see `resolve_precision`).
    `consumer_computes=False` promises that whoever iterates does no torch work of its own
    between events (a call that collects the whole reply): the compute context then stays on
    through the loop instead of being entered and left at every step.
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
    forward = forward_for(model, dtype)
    n_params = forward.n_params
    top = top_count(rows)  # None: no row asks for log-probabilities (no extra work at all)
    records = LogprobRecords(decoders[0].tokenizer) if top is not None else None
    echo = any(r.scores_prompt for r in rows)
    guides = start_guides(rows)  # None: no row is constrained (no extra work)
    seen = seen_tokens(prompts, rows, config.vocab_size, device)  # None: no repetition penalty

    def pick(logits: torch.Tensor) -> tuple[torch.Tensor, list[int], list[TokenLogprob | None] | None]:
        """Every row's next token (as a tensor and as ints) from `logits` (B, vocab), and the
        log-probability record of each row that asks for one."""
        if guides is not None:
            logits_seen = constrain(logits, guides, [d.done for d in decoders])
        else:
            logits_seen = logits
        next_tokens = choose(logits_seen, rows, generators, seen=seen)
        tokens = next_tokens.tolist()
        entries = _step_logprobs(logits, next_tokens, tokens, rows, decoders, top, records) if top is not None \
            else None
        return next_tokens, tokens, entries

    # Each step is one compute block: the forward pass and the pick of the next tokens.
    with computing(device, n_params * B * T):
        cache = KVCache.allocate(config, B, total, device, dtype)
        logits = forward(ids, cache, 0, None if positions is None else positions[:, :T], mask, every_position=echo)
        if echo:
            _score_prompts(logits, ids, pads, rows, decoders, records)
            logits = logits[:, -1]
        if not all(d.done for d in decoders):
            next_tokens, tokens, entries = pick(logits)
    for i, decoder in enumerate(decoders):
        if decoder.done:  # max_tokens 0 (echo): the prompt was all there was to do
            yield Event(i, "", decoder.finish_reason, decoder.take_logprobs())
    if all(d.done for d in decoders):
        return
    pos = T
    step_work = n_params * B
    held = contextlib.nullcontext() if consumer_computes else computing(device, step_work)
    step_context = (lambda: computing(device, step_work)) if consumer_computes else contextlib.nullcontext
    with held:
        while True:
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
            with step_context():
                logits = forward.step(next_tokens, cache, pos, step_positions, mask)
                next_tokens, tokens, entries = pick(logits)
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

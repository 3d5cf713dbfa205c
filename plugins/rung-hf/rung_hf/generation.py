"""rung's decoding rows through transformers' own `model.generate` (so its speed is transformers').

The request side (sampling settings, stops, checks) and the text side (`RowDecoder`) are the
core's `rung.decoding`; here a `Sampling` becomes a `GenerationConfig`, prompts become one
left-padded batch, and the tokens `generate` picks are handed to each row's decoder. Stop
strings are watched during generation (`criteria.RowsDone`) so a row stops as soon as one
appears; without them the tokens are decoded once at the end.

Log-probabilities (only when the Sampling asks): `StepLogprobs` is passed to `generate` as a
logits processor, which sees each step's scores before temperature, top-k and top-p (after
the model's own processors such as a repetition penalty, when its generation_config has them),
and as the streamer, which sees the tokens chosen from them; echo scores the prompt with one
forward pass.

Structured output and token healing (`Sampling.constraint`): `constrained` adds rung-torch's
`ConstrainedLogits` to the processors (after `StepLogprobs`, so log-probabilities stay the
model's own): each row's guide masks the ids the schema (or healing's first token) does not
allow.
"""

from __future__ import annotations

import copy
from collections import deque
from collections.abc import Sequence
from typing import Any

from rung.decoding import LogprobRecords, RowDecoder, Sampling
from rung.records import TokenLogprob


def generation_config(base: Any, sampling: Sampling, pad_id: int) -> Any:
    """A copy of the model's GenerationConfig that decodes as `sampling` says.

    min_p and repetition_penalty are the Sampling's (which took the model's as defaults:
    `HfBackend.defaults`); transformers applies them with its MinPLogitsWarper (sampling only)
    and RepetitionPenaltyLogitsProcessor (greedy too; it reads the whole input, so a
    left-padded row's pad id counts as seen). Settings the Sampling has no word for
    (typical_p...) stay the model's own when sampling; greedy decoding clears the sampling
    ones, which transformers warns about.
    """
    config = copy.deepcopy(base)
    updates: dict[str, Any] = dict(
        max_new_tokens=sampling.max_tokens, max_length=None, min_new_tokens=None, min_length=None,
        num_beams=1, num_return_sequences=1, pad_token_id=pad_id,
        eos_token_id=sorted(sampling.stop_ids) or None, do_sample=not sampling.greedy,
        repetition_penalty=sampling.repetition_penalty,
    )
    if sampling.greedy:
        updates.update(temperature=None, top_p=None, top_k=None, min_p=None, typical_p=None)
    else:
        updates.update(temperature=sampling.temperature, top_p=sampling.top_p or 1.0,
                       top_k=sampling.top_k or 0, min_p=sampling.min_p)  # 0: no top-k; None: no min-p
    for key, value in updates.items():
        setattr(config, key, value)
    return config


def left_padded(prompts: Sequence[Sequence[int]], pad_id: int, device: Any) -> tuple[Any, Any]:
    """input_ids and attention_mask of `prompts`, padded on the left, on `device`."""
    import torch

    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = torch.tensor(list(p), dtype=torch.long)
        mask[row, width - len(p):] = 1
    return ids.to(device), mask.to(device)




def constrained(sampling: Sampling, rows: int, width: int, extra: dict[str, Any]) -> dict[str, Any]:
    """`extra` (generate's keyword arguments) with a constrained Sampling's logits processor
    added after any there: one guide per row (prompts `width` wide); as it was without one."""
    if sampling.constraint is None:
        return extra
    from transformers import LogitsProcessorList

    from rung_torch.picking import ConstrainedLogits

    guides = [sampling.constraint.guide(sampling.stop_ids, sampling.max_tokens) for _ in range(rows)]
    processors = [*extra.get("logits_processor", ()), ConstrainedLogits(guides, width)]
    return {**extra, "logits_processor": LogitsProcessorList(processors)}


class StepLogprobs:
    """Each step's log-softmax, seen as a logits processor, and the records of the tokens chosen
    from it: `rows[r][j]` is row r's j-th generated token. It leaves the scores as they are.

    A step is settled (its records made) as soon as its token is known: from the sequences the
    next processor call or a stopping criterion sees (`settle`), or from a streamer (`at`), so
    at most a step or two of full log-softmax rows are held whichever transformers calls first.
    """

    def __init__(self, records: LogprobRecords, top: int, width: int) -> None:
        self.records, self.top, self.width = records, top, width
        self.pending: deque = deque()
        self.rows: list[list[TokenLogprob]] = []
        self.settled = 0

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        self.settle(input_ids)
        self.pending.append(scores.float().log_softmax(-1))
        return scores

    def settle(self, sequences: Any) -> None:
        """Make the records of every step whose token `sequences` (B, width + n) holds."""
        while self.pending and self.settled < sequences.shape[1] - self.width:
            self._take(sequences[:, self.width + self.settled])

    def at(self, step: int, tokens: Any) -> list[TokenLogprob]:
        """Each row's record of generated token `step` (`tokens`: that step's, one per row)."""
        if step >= self.settled:
            self._take(tokens)
        return [row[step] for row in self.rows]

    def _take(self, tokens: Any) -> None:
        logprobs = self.pending.popleft()
        chosen = tokens.reshape(-1).to(logprobs.device)
        own = logprobs.gather(1, chosen[:, None])[:, 0].tolist()
        top_ids = top_values = None
        if self.top:
            values, indices = logprobs.topk(min(self.top, logprobs.shape[-1]), dim=-1)
            top_ids, top_values = indices.tolist(), values.tolist()
        if not self.rows:
            self.rows = [[] for _ in own]
        for r, token in enumerate(chosen.tolist()):
            self.rows[r].append(self.records.token(token, own[r], top_ids[r] if top_ids else (),
                                                   top_values[r] if top_values else ()))
        self.settled += 1


class _SettledFirst:
    """A stopping criterion that settles the step's log-probabilities before `inner` reads them."""

    def __init__(self, recorder: StepLogprobs, inner: Any) -> None:
        self.recorder, self.inner = recorder, inner

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        self.recorder.settle(input_ids)
        return self.inner(input_ids, scores, **kwargs)


class _Recorded:
    """A row's decoder as `criteria.RowsDone` sees it: each pushed token comes with its record."""

    def __init__(self, decoder: RowDecoder, entries: list[TokenLogprob]) -> None:
        self.decoder, self.entries = decoder, entries

    @property
    def done(self) -> bool:
        return self.decoder.done

    def push(self, token: int) -> str:
        return self.decoder.push(token, self.entries[self.decoder.generated])


def score_prompt(model: Any, prompt: Sequence[int], top: int, records: LogprobRecords, device: Any
                 ) -> tuple[TokenLogprob, ...]:
    """Echo: the prompt's tokens scored by one forward pass (position j predicts token j + 1)."""
    import torch

    from rung_torch.modeling import eval_mode

    ids = torch.tensor([list(prompt)], dtype=torch.long, device=device)
    with torch.no_grad(), eval_mode(model):
        logits = model(input_ids=ids).logits[0, :-1]
    logprobs = logits.float().log_softmax(-1)
    own = logprobs.gather(1, ids[0, 1:, None])[:, 0].tolist()
    top_ids = top_values = None
    if top:
        values, indices = logprobs.topk(min(top, logprobs.shape[-1]), dim=-1)
        top_ids, top_values = indices.tolist(), values.tolist()
    return records.prompt(list(prompt), own, top_ids, top_values)


def generate_rows(model: Any, prompts: Sequence[Sequence[int]], sampling: Sampling, decoders: Sequence[RowDecoder],
                  base_config: Any, pad_id: int, device: Any) -> None:
    """Decode every prompt (one Sampling for all) to the end; the decoders hold the results
    (and the log-probabilities, when the Sampling asks)."""
    import torch

    from rung_torch.modeling import eval_mode

    from rung_hf.criteria import RowsDone, StoppingCriteriaList

    input_ids, mask = left_padded(prompts, pad_id, device)
    width = input_ids.shape[1]
    recorder, extra = None, {}
    if sampling.logprobs is not None:
        from transformers import LogitsProcessorList

        records = LogprobRecords(decoders[0].tokenizer)
        if sampling.echo:
            for prompt, decoder in zip(prompts, decoders):
                decoder.prompt_logprobs = score_prompt(model, prompt, sampling.logprobs, records, device)
        recorder = StepLogprobs(records, sampling.logprobs, width)
        extra = dict(logits_processor=LogitsProcessorList([recorder]))
    if all(d.done for d in decoders):  # max_tokens 0 (echo): nothing to generate
        return
    extra = constrained(sampling, len(prompts), width, extra)
    config = generation_config(base_config, sampling, pad_id)
    criteria = None
    if sampling.stop:
        if recorder is None:
            criteria = StoppingCriteriaList([RowsDone(decoders)])
        else:
            watched = [_Recorded(d, []) for d in decoders]
            recorder.rows = [w.entries for w in watched]  # filled step by step, read by RowsDone
            criteria = StoppingCriteriaList([_SettledFirst(recorder, RowsDone(watched))])
    with torch.no_grad(), eval_mode(model):
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        out = model.generate(input_ids=input_ids, attention_mask=mask, generation_config=config,
                             stopping_criteria=criteria, **extra)
    if recorder is not None:
        recorder.settle(out)
    for row, (decoder, tokens) in enumerate(zip(decoders, out[:, width:].tolist())):
        for token in tokens[decoder.generated:]:  # RowsDone may have taken them already
            if decoder.done:
                break
            decoder.push(token, recorder.rows[row][decoder.generated] if recorder is not None else None)
        decoder.finish("length")

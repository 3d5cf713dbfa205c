"""What a pretraining run watches: validation loss, perplexity and bits per byte, and text samples.

Framework-neutral: the loss is the backend framework's `token_nll_sum` objective, token-weighted
over the fixed validation batches (`rung.objectives.heldout_loss`), and the samples are the
backend's own generation, continuing each prompt as plain text. The engine runs the evaluator
in its evaluation context, where the backend's model holds the weights being trained.

Bits per byte (`val_bpb`) is the same validation loss counted against the UTF-8 bytes the
predicted tokens spell: nats summed over the target tokens / ln 2 / their bytes (a special
token, such as the end-of-document token between files, spells none, so its loss is charged to
the text's bytes). It does not depend on the tokenizer, so runs with different vocabularies
compare, and it is what `rung eval`'s perplexity tasks report for other models.
"""

from __future__ import annotations

import math
from typing import Any

from rung.objectives import heldout_loss
from rung.records import GenerationRequest

from rung_pretrain.trainer_options import PretrainOptions


class Evaluator:
    """`evaluate(model)`: validation loss and perplexity; text samples every `sample_every` steps."""

    def __init__(self, opts: PretrainOptions, nll_sum: Any, val: list, backend: Any, run: Any, counter: Any,
                 main: bool, baseline: float | None = None, sample_here: bool | None = None,
                 tokenizer: Any = None) -> None:
        self.opts, self.backend, self.run, self.counter, self.main = opts, backend, run, counter, main
        self.val_loss = heldout_loss(nll_sum, val)
        # nats/token -> bits/byte: the validation targets' tokens per byte, over ln 2 (counted once).
        self.bits_per_nat_token = bits_per_byte_factor(val, tokenizer) if tokenizer is not None else None
        self.baseline = baseline
        # Under FSDP every rank takes part in each forward pass: all ranks sample, rank 0 logs.
        self.sample_here = main if sample_here is None else sample_here
        self.last: dict[str, float] | None = None
        self._sampled_at = -1

    def __call__(self, model: Any) -> dict[str, float]:
        out: dict[str, float] = {}
        loss = self.val_loss(model).get("eval_loss")
        if loss is not None:
            out = {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0))}
            if self.bits_per_nat_token:
                out["val_bpb"] = loss * self.bits_per_nat_token
            if self.baseline is not None:
                out["unigram_loss"] = self.baseline
            self.last = dict(out)
        step, every = self.counter.step, self.opts.sample_every
        # At the first evaluation in each new stretch of `sample_every` steps.
        due = bool(every) and step >= every and step // every != self._sampled_at
        if self.sample_here and self.opts.sample_prompts and due:
            self._sampled_at = step // every
            samples = self.samples(self.opts.sample_tokens)
            if samples and self.main:
                self.run.log(step, {f"sample_{i}": prompt + text for i, (prompt, text) in enumerate(samples)})
        return out

    def samples(self, max_tokens: int) -> list[tuple[str, str]]:
        """(prompt, continuation) for each sample prompt, from the backend's model as it is now."""
        opts = self.opts
        requests = [
            GenerationRequest(prompt=prompt, raw=True, max_tokens=max_tokens, temperature=opts.sample_temperature,
                              top_k=opts.sample_top_k if opts.sample_temperature else None, seed=self.run.seed + i)
            for i, prompt in enumerate(opts.sample_prompts)
        ]
        completions = self.backend.generate_batch(requests)
        return [(prompt, c.text) for prompt, c in zip(opts.sample_prompts, completions)]


def bits_per_byte_factor(batches: list, tokenizer: Any) -> float | None:
    """(target tokens) / (their UTF-8 bytes) / ln 2: multiplies a mean nats/token into bits per byte.

    Each token's bytes come from the tokenizer's vocabulary (`rung.decoding.structured.token_bytes`:
    a byte-level token's own bytes, half a character included; a special token spells none).
    None when the batches hold no bytes (or the tokenizer's bytes are unknown)."""
    import numpy as np

    from rung.decoding.structured import token_bytes

    if not batches:
        return None
    lengths = np.array([len(b) if b is not None else 0 for b in token_bytes(tokenizer)], dtype=np.int64)
    tokens = n_bytes = 0
    for batch in batches:
        targets = np.asarray(batch.get("targets", batch["input_ids"][:, 1:]))
        targets = targets[targets >= 0]  # ignored positions (-100) predict nothing
        tokens += targets.size
        n_bytes += int(lengths[np.clip(targets, 0, len(lengths) - 1)].sum())
    if not n_bytes:
        return None
    return tokens / n_bytes / math.log(2)

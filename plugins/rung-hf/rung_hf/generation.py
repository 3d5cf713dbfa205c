"""rung's decoding rows through transformers' own `model.generate` (so its speed is transformers').

The request side (sampling settings, stops, checks) and the text side (`RowDecoder`) are the
core's `rung.decoding`; here a `Sampling` becomes a `GenerationConfig`, prompts become one
left-padded batch, and the tokens `generate` picks are handed to each row's decoder. Stop
strings are watched during generation (`criteria.RowsDone`) so a row stops as soon as one
appears; without them the tokens are decoded once at the end.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from rung.decoding import RowDecoder, Sampling


def generation_config(base: Any, sampling: Sampling, pad_id: int) -> Any:
    """A copy of the model's GenerationConfig that decodes as `sampling` says.

    Settings the Sampling has no word for (repetition_penalty, min_p...) stay the model's own
    when sampling; greedy decoding clears the sampling ones, which transformers warns about.
    """
    config = copy.deepcopy(base)
    updates: dict[str, Any] = dict(
        max_new_tokens=sampling.max_tokens, max_length=None, min_new_tokens=None, min_length=None,
        num_beams=1, num_return_sequences=1, pad_token_id=pad_id,
        eos_token_id=sorted(sampling.stop_ids) or None, do_sample=not sampling.greedy,
    )
    if sampling.greedy:
        updates.update(temperature=None, top_p=None, top_k=None, min_p=None, typical_p=None)
    else:
        updates.update(temperature=sampling.temperature, top_p=sampling.top_p or 1.0,
                       top_k=sampling.top_k or 0)  # 0: no top-k
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


class eval_mode:
    """Eval mode for the duration of a generation, then back to what it was (mid-training samples)."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def __enter__(self) -> None:
        self.was_training = self.model.training
        if self.was_training:
            self.model.eval()

    def __exit__(self, *exc: Any) -> None:
        if self.was_training:
            self.model.train()


def generate_rows(model: Any, prompts: Sequence[Sequence[int]], sampling: Sampling, decoders: Sequence[RowDecoder],
                  base_config: Any, pad_id: int, device: Any) -> None:
    """Decode every prompt (one Sampling for all) to the end; the decoders hold the results."""
    import torch

    from rung_hf.criteria import RowsDone, StoppingCriteriaList

    input_ids, mask = left_padded(prompts, pad_id, device)
    width = input_ids.shape[1]
    config = generation_config(base_config, sampling, pad_id)
    criteria = StoppingCriteriaList([RowsDone(decoders)]) if sampling.stop else None
    with torch.no_grad(), eval_mode(model):
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        out = model.generate(input_ids=input_ids, attention_mask=mask, generation_config=config,
                             stopping_criteria=criteria)
    for decoder, tokens in zip(decoders, out[:, width:].tolist()):
        for token in tokens[decoder.generated:]:  # RowsDone may have taken them already
            if decoder.done:
                break
            decoder.push(token)
        decoder.finish("length")

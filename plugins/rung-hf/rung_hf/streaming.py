"""One row streamed from `model.generate`: it runs in a worker thread and hands each new token
over a queue; the caller's thread turns tokens into text deltas (the core's RowDecoder) and
ends the generation as soon as the row is done or the caller stops reading. With logprobs
asked, each token travels with its record (`generation.StepLogprobs`, computed in the worker)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

from rung.decoding import RowDecoder, Sampling


class TokenQueue:
    """A transformers streamer that hands each step's new token ids (and, with a `recorder`,
    their log-probability records) to the consuming thread."""

    def __init__(self, recorder: Any = None) -> None:
        self.queue: queue.Queue = queue.Queue()
        self.prompt_seen = False
        self.recorder = recorder
        self.steps = 0

    def put(self, value: Any) -> None:
        if not self.prompt_seen:  # generate() first puts the prompt
            self.prompt_seen = True
            return
        tokens = [int(t) for t in value.reshape(-1).tolist()]
        entries = self.recorder.at(self.steps, value) if self.recorder is not None else [None] * len(tokens)
        self.steps += 1
        self.queue.put(list(zip(tokens, entries)))

    def end(self) -> None:
        self.queue.put(None)

    def get(self) -> list[tuple[int, Any]] | None:
        return self.queue.get()


def stream_row(model: Any, prompt: list[int], sampling: Sampling, decoder: RowDecoder,
               base_config: Any, pad_id: int, device: Any, lock: Any = None) -> Iterator[str]:
    """The text deltas of one row, as tokens are generated; `decoder` ends with the row's
    finish reason and counts. `lock` is held around `generate`, in the thread that runs it (the
    caller's `next` may come from a different thread each time: `astream`)."""
    import contextlib

    import torch

    from rung.decoding import LogprobRecords
    from rung_hf.criteria import Cancel, StoppingCriteriaList
    from rung_hf.generation import StepLogprobs, constrained, generation_config, left_padded, score_prompt
    from rung_torch.modeling import eval_mode

    input_ids, mask = left_padded([prompt], pad_id, device)
    recorder, extra = None, {}
    if sampling.logprobs is not None:
        from transformers import LogitsProcessorList

        records = LogprobRecords(decoder.tokenizer)
        if sampling.echo:
            with lock or contextlib.nullcontext():
                decoder.prompt_logprobs = score_prompt(model, prompt, sampling.logprobs, records, device)
        recorder = StepLogprobs(records, sampling.logprobs, input_ids.shape[1])
        extra = dict(logits_processor=LogitsProcessorList([recorder]))
    if decoder.done:  # max_tokens 0 (echo): nothing to generate
        return
    extra = constrained(sampling, 1, input_ids.shape[1], extra)  # structured output: the schema's mask
    config = generation_config(base_config, sampling, pad_id)
    streamer = TokenQueue(recorder)
    cancel = Cancel()
    failure: list[BaseException] = []

    def work() -> None:
        try:
            with lock or contextlib.nullcontext(), torch.no_grad(), eval_mode(model):
                if sampling.seed is not None:
                    torch.manual_seed(sampling.seed)
                model.generate(input_ids=input_ids, attention_mask=mask, generation_config=config,
                               stopping_criteria=StoppingCriteriaList([cancel]), streamer=streamer, **extra)
        except BaseException as exc:  # handed to the caller's thread
            failure.append(exc)
        finally:
            streamer.end()

    thread = threading.Thread(target=work, name="rung-hf-generate", daemon=True)
    thread.start()
    try:
        while not decoder.done and (tokens := streamer.get()) is not None:
            for token, entry in tokens:
                text = decoder.push(token, entry)
                if text:
                    yield text
                if decoder.done:
                    break
    finally:
        cancel.set()  # the row is done, or the caller stopped reading: end generate() now
        thread.join()
    if failure:
        raise failure[0]

"""One row streamed from `model.generate`: it runs in a worker thread and hands each new token
over a queue; the caller's thread turns tokens into text deltas (the core's RowDecoder) and
ends the generation as soon as the row is done or the caller stops reading."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

from rung.decoding import RowDecoder, Sampling


class TokenQueue:
    """A transformers streamer that hands each step's new token ids to the consuming thread."""

    def __init__(self) -> None:
        self.queue: queue.Queue = queue.Queue()
        self.prompt_seen = False

    def put(self, value: Any) -> None:
        if not self.prompt_seen:  # generate() first puts the prompt
            self.prompt_seen = True
            return
        self.queue.put([int(t) for t in value.reshape(-1).tolist()])

    def end(self) -> None:
        self.queue.put(None)

    def get(self) -> list[int] | None:
        return self.queue.get()


def stream_row(model: Any, prompt: list[int], sampling: Sampling, decoder: RowDecoder,
               base_config: Any, pad_id: int, device: Any, lock: Any = None) -> Iterator[str]:
    """The text deltas of one row, as tokens are generated; `decoder` ends with the row's
    finish reason and counts. `lock` is held around `generate`, in the thread that runs it (the
    caller's `next` may come from a different thread each time: `astream`)."""
    import contextlib

    import torch

    from rung_hf.criteria import Cancel, StoppingCriteriaList
    from rung_hf.generation import eval_mode, generation_config, left_padded

    input_ids, mask = left_padded([prompt], pad_id, device)
    config = generation_config(base_config, sampling, pad_id)
    streamer = TokenQueue()
    cancel = Cancel()
    failure: list[BaseException] = []

    def work() -> None:
        try:
            with lock or contextlib.nullcontext(), torch.no_grad(), eval_mode(model):
                if sampling.seed is not None:
                    torch.manual_seed(sampling.seed)
                model.generate(input_ids=input_ids, attention_mask=mask, generation_config=config,
                               stopping_criteria=StoppingCriteriaList([cancel]), streamer=streamer)
        except BaseException as exc:  # handed to the caller's thread
            failure.append(exc)
        finally:
            streamer.end()

    thread = threading.Thread(target=work, name="rung-hf-generate", daemon=True)
    thread.start()
    try:
        while not decoder.done and (tokens := streamer.get()) is not None:
            for token in tokens:
                text = decoder.push(token)
                if text:
                    yield text
                if decoder.done:
                    break
    finally:
        cancel.set()  # the row is done, or the caller stopped reading: end generate() now
        thread.join()
    if failure:
        raise failure[0]

"""The `hf` backend: a transformers causal LM that generates, streams, batches and trains.

Requests become prompt ids and a `Sampling` through the core's `rung.decoding` (the chat
template rule, the model's generation_config.json as defaults, stops, max_tokens and context
checks: the same as every local backend), and tokens become text through its `RowDecoder`.
The tokens themselves come from transformers' own `model.generate` (`rung_hf.generation`,
`rung_hf.streaming`), so its speed is transformers'. Training hands `self.model` to
rung-torch's `TorchEngine`.
"""

from __future__ import annotations

import contextlib
import copy
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from rung.decoding import Defaults, RowDecoder, Sampling, request_to_prompt
from rung.errors import RungError
from rung.interfaces import BaseBackend, Capabilities
from rung.records import Completion, Delta, GenerationRequest, Usage

from rung_hf.options import HFOptions
from rung_hf.tokenizer import HFTokenizer, as_hf_tokenizer


class HFBackend(BaseBackend):
    """Any transformers `AutoModelForCausalLM` with its tokenizer.

    `model` is the `torch.nn.Module` (a trainer may replace it, e.g. with a peft wrapper),
    `hf_tokenizer` the transformers tokenizer and `tokenizer` the same as a rung Tokenizer;
    `stop_ids` are the ids that end every generation (generation_config.json's eos ids, the
    tokenizer's eos and end-of-turn tokens).
    """

    framework = "torch"
    capabilities = Capabilities(chat=True, streaming=True, logprobs=True, trainable=True, structured_output=True)

    def __init__(self, options: HFOptions, tokenizer: Any = None) -> None:
        from rung_hf.loading import load_model, load_tokenizer

        self.options = options
        self.model, self.device, self.source = load_model(options)
        if tokenizer is not None:
            hf_tok = as_hf_tokenizer(tokenizer)
        elif options.tokenizer:
            hf_tok = load_tokenizer(options.tokenizer, field="backend.tokenizer", revision=None,
                                    trust_remote_code=options.trust_remote_code,
                                    local_files_only=options.local_files_only)
        else:
            hf_tok = load_tokenizer(self.source.path if self.source.local else options.model,
                                    field="backend.model", revision=options.revision,
                                    trust_remote_code=options.trust_remote_code,
                                    local_files_only=options.local_files_only or self.source.local)
        if options.chat_template:
            hf_tok.chat_template = options.chat_template
        self.hf_tokenizer = hf_tok
        self.tokenizer = HFTokenizer(hf=hf_tok)
        self._lock = threading.RLock()  # one generate() at a time: torch's global seed, one model
        self._setup_special_ids()
        if options.adapter:
            from rung_torch.modeling import load_adapter_option

            load_adapter_option(self, options.adapter)

    # ------------------------------------------------------------------ set-up

    def _setup_special_ids(self) -> None:
        model = self.model
        stops: list[int] = []
        configured = getattr(model.generation_config, "eos_token_id", None)
        for value in [*(configured if isinstance(configured, (list, tuple)) else [configured]),
                      self.tokenizer.eos_id, *self.tokenizer.end_of_turn_ids]:
            if value is not None and int(value) not in stops:
                stops.append(int(value))
        self.stop_ids = stops
        pad = self.tokenizer.pad_id
        if pad is None:
            pad = getattr(model.generation_config, "pad_token_id", None)
        if pad is None:
            pad = stops[0] if stops else 0
        self.pad_id = int(pad)
        config = getattr(model, "config", None)
        self.context_length = getattr(config, "max_position_embeddings", None) if config is not None else None
        self._base_generation_config = copy.deepcopy(model.generation_config)

    @property
    def model_name(self) -> str:
        return self.options.model

    # ------------------------------------------------------------------ requests -> ids

    def defaults(self) -> Defaults:
        """The options' generation defaults, else the model's generation_config.json (token
        healing: the options' only)."""
        base, o = self._base_generation_config, self.options
        temperature = o.temperature
        if temperature is None:
            temperature = (base.temperature if base.temperature is not None else 1.0) if base.do_sample else 0.0
        return Defaults(max_tokens=o.max_tokens, temperature=temperature,
                        top_p=o.top_p if o.top_p is not None else base.top_p,
                        top_k=o.top_k if o.top_k is not None else base.top_k,
                        min_p=o.min_p if o.min_p is not None else getattr(base, "min_p", None),
                        repetition_penalty=o.repetition_penalty if o.repetition_penalty is not None
                        else getattr(base, "repetition_penalty", None),
                        token_healing=o.token_healing)

    def _prepare(self, request: GenerationRequest) -> tuple[list[int], Sampling]:
        return request_to_prompt(request, self.tokenizer, self.defaults(), context=self.context_length,
                                 stop_ids=frozenset(self.stop_ids))

    def _generation_config(self, sampling: Sampling) -> Any:
        from rung_hf.generation import generation_config

        return generation_config(self._base_generation_config, sampling, self.pad_id)

    # ------------------------------------------------------------------ generation

    def _run(self, batch: Sequence[tuple[list[int], Sampling]]) -> list[Completion]:
        """One batch of prompts that sample alike."""
        from rung_hf.generation import generate_rows

        sampling = batch[0][1]
        decoders = [RowDecoder(self.tokenizer, sampling, len(ids), incremental=False) for ids, _ in batch]
        with self._lock:
            generate_rows(self.model, [ids for ids, _ in batch], sampling, decoders,
                          self._base_generation_config, self.pad_id, self.device)
        return [Completion(d.text, d.finish_reason or "length", _usage(d), self.options.model, d.logprobs,
                           d.prompt_logprobs) for d in decoders]

    def generate(self, request: GenerationRequest) -> Completion:
        return self._run([self._prepare(request)])[0]

    def generate_batch(self, requests: Sequence[GenerationRequest], max_concurrency: int = 8) -> list[Completion]:
        """Decode requests together, `options.batch_size` at a time (left-padded).

        Requests that sample alike (temperature, top_p, top_k, max_tokens, seed, stop) share a
        batch; results come back in the order of `requests`.
        """
        prepared = [self._prepare(r) for r in requests]
        groups: dict[Sampling, list[int]] = {}
        for index, (_, sampling) in enumerate(prepared):
            groups.setdefault(sampling, []).append(index)
        results: list[Completion | None] = [None] * len(prepared)
        size = self.options.batch_size
        for indices in groups.values():
            indices = sorted(indices, key=lambda i: len(prepared[i][0]))  # less padding
            for start in range(0, len(indices), size):
                chunk = indices[start:start + size]
                for index, completion in zip(chunk, self._run([prepared[i] for i in chunk])):
                    results[index] = completion
        return results  # type: ignore[return-value]

    @property
    def decode_slots(self) -> Any:
        """`decode_slots(max_slots)`: a running decode batch of `max_slots` requests on this model
        (`rung.interfaces.DecodeSlots`, continuous batching in rung serve: `rung_hf.slots`).

        None (rung serve then answers one request at a time) when `continuous_batching` is off
        or the model cannot decode that way (a sliding-window or other non-plain cache, a
        forward without position_ids): `rung_hf.slots.batchable` says why."""
        from rung_hf.slots import batchable

        if not self.options.continuous_batching or batchable(self.model) is not None:
            return None
        return self._decode_slots

    def _decode_slots(self, max_slots: int = 32) -> Any:
        from rung_hf.slots import HFDecodeSlots

        return HFDecodeSlots(self, max_slots)

    def stream(self, request: GenerationRequest) -> Iterator[Delta]:
        """Deltas as tokens are decoded; text that may begin a stop string is held back."""
        from rung_hf.streaming import stream_row

        ids, sampling = self._prepare(request)
        decoder = RowDecoder(self.tokenizer, sampling, len(ids), incremental=True)
        # The lock is taken by generate()'s own thread: `astream` calls next() from any thread.
        rows = stream_row(self.model, ids, sampling, decoder, self._base_generation_config, self.pad_id, self.device,
                          lock=self._lock)
        with contextlib.closing(rows):  # a caller that stops reading ends generate() here
            for text in rows:
                yield Delta(text, model=self.options.model, logprobs=decoder.take_logprobs())
        tail = decoder.finish("length")  # generate() ended at max_new_tokens
        yield Delta(tail, finish_reason=decoder.finish_reason, usage=_usage(decoder), model=self.options.model,
                    logprobs=decoder.take_logprobs())

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text))

    # ------------------------------------------------------------------ training and saving

    def engine(self) -> Any:
        """rung-torch's TorchEngine bound to `self.model` as it is now."""
        from rung_torch.engine import TorchEngine

        if self.options.device_map is not None:
            raise RungError(
                "backend.device_map spreads the model for inference only; to train a model larger than "
                "one GPU, leave device_map unset and launch with torchrun (the engine shards with FSDP)"
            )
        return TorchEngine(self.model, self.options, device=self.device)

    def adapters(self) -> Any:
        """LoRA adapters on `self.model` (`rung.interfaces.Adapters`, rung-torch's peft code)."""
        from rung_torch.adapters import PeftAdapters

        return PeftAdapters(self)

    def score_heads(self) -> Any:
        """A scalar head on `self.model` (`rung.interfaces.ScoreHeads`, rung-torch's code)."""
        from rung_torch.scoring import TorchScoreHeads

        return TorchScoreHeads(self)

    def frozen_copy(self) -> Any:
        """A copy of the model as it is now: eval mode, no gradients, untouched by training."""
        from rung_torch.backend import frozen_copy

        return frozen_copy(self.model)

    def save(self, directory: str | Path) -> None:
        """The model in the Hugging Face format (safetensors, config.json, generation_config.json)
        and the tokenizer, so transformers, rung-hf (and rung-torch, for Llama) load it. It is the
        causal LM: a score head is saved as a sequence classifier by `score_heads().save_scorer`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        from rung_hf.loading import quiet_progress
        from rung_torch.scoring import SCORE

        model = _unwrap(self.model)
        kwargs: dict[str, Any] = {}
        if SCORE in getattr(model, "_modules", {}):  # a head on the model itself (not a peft wrapper)
            kwargs["state_dict"] = {k: v for k, v in model.state_dict().items() if not k.startswith("score.")}
        with quiet_progress(True):
            model.save_pretrained(str(directory), **kwargs)
        self.hf_tokenizer.save_pretrained(str(directory))

    def __repr__(self) -> str:
        return f"HFBackend(model={self.options.model!r}, device={self.device})"


def _usage(decoder: RowDecoder) -> Usage:
    return Usage(prompt_tokens=decoder.prompt_tokens, completion_tokens=decoder.completion_tokens)


def _unwrap(model: Any) -> Any:
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if inner is None or not hasattr(inner, "save_pretrained"):
            return model
        model = inner

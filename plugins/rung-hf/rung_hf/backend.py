"""The `hf` backend: a transformers causal LM that generates, streams, batches and trains.

Generation is `model.generate` with a `GenerationConfig` built from the request (so its
speed is transformers' own), prompts left-padded into batches, chat templates from the
tokenizer, stop strings matched on the decoded text, and usage counted from the tokens.
Training hands `self.model` to rung-torch's `TorchEngine`.
"""

from __future__ import annotations

import copy
import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rung.errors import RungError
from rung.interfaces import BaseBackend, Capabilities
from rung.records import Completion, Delta, GenerationRequest, Usage

from rung_hf.options import HFOptions
from rung_hf.tokenizer import HFTokenizer, as_hf_tokenizer, end_of_turn_ids, render_chat


@dataclass(frozen=True)
class Sampling:
    """How one request samples; requests with equal Sampling decode in one batch."""

    greedy: bool
    temperature: float | None
    top_p: float | None
    top_k: int | None
    max_new_tokens: int
    seed: int | None
    stop: tuple[str, ...]


@dataclass
class Prepared:
    ids: list[int]
    sampling: Sampling


class HFBackend(BaseBackend):
    """Any transformers `AutoModelForCausalLM` with its tokenizer.

    `model` is the `torch.nn.Module` (a trainer may replace it, e.g. with a peft wrapper),
    `hf_tokenizer` the transformers tokenizer and `tokenizer` the same as a rung Tokenizer.
    """

    framework = "torch"
    capabilities = Capabilities(chat=True, streaming=True, logprobs=False, trainable=True)

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
        self._lock = threading.RLock()
        self._setup_special_ids()
        if options.adapter:
            from rung_torch.modeling import load_adapter_option

            load_adapter_option(self, options.adapter)

    # ------------------------------------------------------------------ set-up

    def _setup_special_ids(self) -> None:
        tok, model = self.hf_tokenizer, self.model
        stops: list[int] = []
        configured = getattr(model.generation_config, "eos_token_id", None)
        for value in (configured if isinstance(configured, (list, tuple)) else [configured]):
            if value is not None and int(value) not in stops:
                stops.append(int(value))
        for value in [tok.eos_token_id, *end_of_turn_ids(tok)]:
            if value is not None and int(value) not in stops:
                stops.append(int(value))
        self.stop_ids = stops
        pad = tok.pad_token_id
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

    def _sampling(self, request: GenerationRequest) -> Sampling:
        base = self._base_generation_config
        o = self.options
        temperature = request.temperature if request.temperature is not None else o.temperature
        if temperature is None:  # the model's own default (generation_config.json)
            temperature = (base.temperature if base.temperature is not None else 1.0) if base.do_sample else 0.0
        top_p = request.top_p if request.top_p is not None else o.top_p
        top_k = request.top_k if request.top_k is not None else o.top_k
        greedy = temperature <= 0
        return Sampling(
            greedy=greedy,
            temperature=None if greedy else float(temperature),
            top_p=None if greedy else top_p,
            top_k=None if greedy else top_k,
            max_new_tokens=int(request.max_tokens or o.max_tokens),
            seed=request.seed,
            stop=tuple(s for s in request.stop if s),
        )

    def prompt_text(self, request: GenerationRequest) -> tuple[str, bool]:
        """(text, add_special_tokens): a chat through the template, or a raw prompt as it is."""
        if request.messages or request.system:
            return render_chat(self.hf_tokenizer, request.chat(), add_generation_prompt=True), False
        return request.prompt or "", True

    def _prepare(self, request: GenerationRequest) -> Prepared:
        text, add_special = self.prompt_text(request)
        ids = list(self.hf_tokenizer.encode(text, add_special_tokens=add_special))
        if not ids:  # an empty raw prompt: start from bos (or eos, the document separator)
            start = self.hf_tokenizer.bos_token_id
            ids = [start if start is not None else (self.stop_ids[0] if self.stop_ids else self.pad_id)]
        if self.context_length and len(ids) >= self.context_length:
            raise RungError(
                f"the prompt is {len(ids)} tokens and model '{self.options.model}' reads at most "
                f"{self.context_length}; shorten it"
            )
        return Prepared(ids, self._sampling(request))

    def _generation_config(self, sampling: Sampling, prompt_len: int) -> Any:
        config = copy.deepcopy(self._base_generation_config)
        max_new = sampling.max_new_tokens
        if self.context_length:
            max_new = max(1, min(max_new, self.context_length - prompt_len))
        updates: dict[str, Any] = dict(
            max_new_tokens=max_new, max_length=None, min_new_tokens=None, min_length=None,
            num_beams=1, num_return_sequences=1, pad_token_id=self.pad_id,
            eos_token_id=list(self.stop_ids) or None, do_sample=not sampling.greedy,
        )
        if sampling.greedy:
            updates.update(temperature=None, top_p=None, top_k=None, min_p=None, typical_p=None)
        else:  # unset values keep the model's generation_config.json defaults
            updates["temperature"] = sampling.temperature
            if sampling.top_p is not None:
                updates["top_p"] = sampling.top_p
            if sampling.top_k is not None:
                updates["top_k"] = sampling.top_k  # 0: no top-k
        for key, value in updates.items():
            setattr(config, key, value)
        return config

    def _batch_tensors(self, prompts: Sequence[list[int]]) -> tuple[Any, Any]:
        """Left-padded input_ids and attention_mask on the model's input device."""
        import torch

        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, p in enumerate(prompts):
            ids[row, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[row, width - len(p):] = 1
        return ids.to(self.device), mask.to(self.device)

    def _decode(self, ids: Sequence[int]) -> str:
        return self.hf_tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)

    # ------------------------------------------------------------------ generation

    def _run(self, batch: Sequence[Prepared]) -> list[Completion]:
        import torch

        from rung_hf.criteria import StoppingCriteriaList, StopStrings

        sampling = batch[0].sampling
        prompts = [p.ids for p in batch]
        input_ids, mask = self._batch_tensors(prompts)
        width = input_ids.shape[1]
        config = self._generation_config(sampling, width)
        criteria = None
        stop_strings = None
        if sampling.stop:
            stop_strings = StopStrings(self._decode, sampling.stop, width)
            criteria = StoppingCriteriaList([stop_strings])
        with self._lock, torch.no_grad(), _eval_mode(self.model):
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
            out = self.model.generate(input_ids=input_ids, attention_mask=mask, generation_config=config,
                                      stopping_criteria=criteria)
        generated = out[:, width:].tolist()
        stop_set = set(self.stop_ids)
        results = []
        for row, tokens in enumerate(generated):
            if stop_strings is not None and row in stop_strings.stopped_at:
                tokens = tokens[: stop_strings.stopped_at[row]]
            finish = "length"
            text_tokens = tokens
            for j, t in enumerate(tokens):
                if t in stop_set:
                    tokens, text_tokens, finish = tokens[: j + 1], tokens[:j], "stop"
                    break
            text = self._decode(text_tokens)
            if sampling.stop:
                text, cut = _cut_at_stop(text, sampling.stop)
                if cut:
                    finish = "stop"
            usage = Usage(prompt_tokens=len(prompts[row]), completion_tokens=len(tokens))
            results.append(Completion(text, finish, usage, self.options.model))
        return results

    def generate(self, request: GenerationRequest) -> Completion:
        return self._run([self._prepare(request)])[0]

    def generate_batch(self, requests: Sequence[GenerationRequest], max_concurrency: int = 8) -> list[Completion]:
        """Decode requests together, `options.batch_size` at a time (left-padded).

        Requests that sample alike (temperature, top_p, top_k, max_tokens, seed, stop) share a
        batch; results come back in the order of `requests`.
        """
        prepared = [self._prepare(r) for r in requests]
        groups: dict[Sampling, list[int]] = {}
        for index, p in enumerate(prepared):
            groups.setdefault(p.sampling, []).append(index)
        results: list[Completion | None] = [None] * len(prepared)
        size = self.options.batch_size
        for indices in groups.values():
            indices = sorted(indices, key=lambda i: len(prepared[i].ids))  # less padding
            for start in range(0, len(indices), size):
                chunk = indices[start:start + size]
                for index, completion in zip(chunk, self._run([prepared[i] for i in chunk])):
                    results[index] = completion
        return results  # type: ignore[return-value]

    def stream(self, request: GenerationRequest) -> Iterator[Delta]:
        """Deltas as tokens are decoded; text that may begin a stop string is held back."""
        import torch

        from rung_hf.criteria import Cancel, StoppingCriteriaList

        prepared = self._prepare(request)
        sampling = prepared.sampling
        input_ids, mask = self._batch_tensors([prepared.ids])
        width = input_ids.shape[1]
        config = self._generation_config(sampling, width)
        streamer = _TokenQueue()
        cancel = Cancel()
        failure: list[BaseException] = []

        def work() -> None:
            try:
                with torch.no_grad(), _eval_mode(self.model):
                    if sampling.seed is not None:
                        torch.manual_seed(sampling.seed)
                    self.model.generate(input_ids=input_ids, attention_mask=mask, generation_config=config,
                                        stopping_criteria=StoppingCriteriaList([cancel]), streamer=streamer)
            except BaseException as exc:  # handed to the caller's thread
                failure.append(exc)
            finally:
                streamer.end()

        stop_set = set(self.stop_ids)
        decoder = _IncrementalDecoder(self._decode)
        stops = sampling.stop
        longest = max((len(s) for s in stops), default=0)
        text = ""  # all text decoded so far
        sent = 0  # characters of `text` already yielded
        searched = 0  # `text` before this index holds no stop string
        count = 0
        finish = "length"
        with self._lock:
            thread = threading.Thread(target=work, name="rung-hf-generate", daemon=True)
            thread.start()
            try:
                done = False
                while not done:
                    tokens = streamer.get()
                    if tokens is None:
                        break
                    visible = []
                    for t in tokens:
                        count += 1
                        if t in stop_set:
                            finish, done = "stop", True
                            break
                        visible.append(t)
                    text += decoder.push(visible)
                    if done:
                        text += decoder.flush()
                    if stops:
                        hit = _find_stop(text, stops, max(0, searched - longest))
                        searched = len(text)
                        if hit is not None:
                            text, finish, done = text[:hit], "stop", True
                    if done:
                        cancel.set()
                        break
                    hold = _held_back(text, stops) if stops else 0
                    if len(text) - hold > sent:
                        yield Delta(text[sent:len(text) - hold], model=self.options.model)
                        sent = len(text) - hold
                if finish == "length" and not done:
                    text += decoder.flush()
                    if stops:
                        hit = _find_stop(text, stops, max(0, searched - longest))
                        if hit is not None:
                            text, finish = text[:hit], "stop"
            finally:
                cancel.set()
                thread.join()
            if failure:
                raise failure[0]
        usage = Usage(prompt_tokens=len(prepared.ids), completion_tokens=count)
        yield Delta(text[sent:], finish_reason=finish, usage=usage, model=self.options.model)

    def count_tokens(self, text: str) -> int:
        return len(self.hf_tokenizer.encode(text, add_special_tokens=False))

    # ------------------------------------------------------------------ training and saving

    def engine(self) -> Any:
        """rung-torch's TorchEngine bound to `self.model` as it is now."""
        try:
            from rung_torch.engine import TorchEngine
        except ImportError as exc:
            raise RungError(f"training the hf backend needs rung-torch's engine ({exc}); pip install rung-torch") from None
        if self.options.device_map is not None:
            raise RungError(
                "backend.device_map spreads the model for inference only; to train a model larger than "
                "one GPU, leave device_map unset and launch with torchrun (the engine shards with FSDP)"
            )
        return TorchEngine(self.model, self.options, device=self.device)

    def save(self, directory: str | Path) -> None:
        """The model in the Hugging Face format (safetensors, config.json, generation_config.json)
        and the tokenizer, so transformers, rung-hf (and rung-torch, for Llama) load it."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        from rung_hf.loading import quiet_progress

        model = _unwrap(self.model)
        with quiet_progress(True):
            model.save_pretrained(str(directory))
        self.hf_tokenizer.save_pretrained(str(directory))

    def __repr__(self) -> str:
        return f"HFBackend(model={self.options.model!r}, device={self.device})"


# ---------------------------------------------------------------------- helpers


def _unwrap(model: Any) -> Any:
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if inner is None or not hasattr(inner, "save_pretrained"):
            return model
        model = inner


class _eval_mode:
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


def _find_stop(text: str, stops: Sequence[str], start: int) -> int | None:
    hits = [i for i in (text.find(s, start) for s in stops) if i >= 0]
    return min(hits) if hits else None


def _cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    hit = _find_stop(text, stops, 0)
    return (text, False) if hit is None else (text[:hit], True)


def _held_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest end of `text` that could begin a stop string."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best


class _IncrementalDecoder:
    """Text of a growing token list, a piece at a time, never splitting a character.

    Decodes a short window (from the token before the last emitted piece) so that tokenizers
    which drop a leading space at the start of a decode still give the right text; the window
    starts only after text that decoded whole (no U+FFFD), so invalid byte sequences decode
    as they do in one piece.
    """

    def __init__(self, decode: Any) -> None:
        self.decode = decode
        self.ids: list[int] = []
        self.prefix = 0
        self.read = 0

    def push(self, new_ids: Sequence[int]) -> str:
        if not new_ids:
            return ""
        self.ids.extend(new_ids)
        before = self.decode(self.ids[self.prefix:self.read])
        now = self.decode(self.ids[self.prefix:])
        if len(now) > len(before) and not now.endswith("\ufffd"):
            if "\ufffd" not in now:  # the window only ever starts where the text before is whole
                self.prefix = self.read
            self.read = len(self.ids)
            return now[len(before):]
        return ""

    def flush(self) -> str:
        """Whatever is still held (e.g. an incomplete character at the very end)."""
        before = self.decode(self.ids[self.prefix:self.read])
        now = self.decode(self.ids[self.prefix:])
        self.prefix = self.read = len(self.ids)
        return now[len(before):] if len(now) > len(before) else ""


class _TokenQueue:
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

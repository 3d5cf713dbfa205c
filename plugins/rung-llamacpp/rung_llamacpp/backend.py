"""The `llamacpp` backend: a GGUF model run by llama.cpp (llama-cpp-python), on the CPU.

`options.model` is a .gguf file, or a model folder that is exported to GGUF once and cached
beside it (`rung_llamacpp.model_file`). Requests become prompt ids and a `Sampling` through
the core's `rung.decoding` (the chat-template rule, stops, max_tokens and context checks: the
same as every local backend); llama.cpp evaluates the tokens and returns each step's logits;
the token is picked here (`rung_llamacpp.picking`, rung-torch's rule) and turned into text by
the core's `RowDecoder`. A folder's own tokenizer (rung's or transformers') tokenizes, so ids
and text are exactly rung-torch's; a bare GGUF file is tokenized by llama.cpp
(`rung_llamacpp.tokenizer`).

One llama.cpp context holds one sequence: requests run one at a time (a lock), each from an
empty KV cache, so an answer never depends on what ran before it. `generate_batch` therefore
runs its requests one after another (llama-cpp-python's API decodes one sequence per context).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from rung.decoding import LogprobRecords, RowDecoder, Sampling, defaults_of, request_to_prompt
from rung.errors import ConfigError, RungError
from rung.interfaces import BaseBackend, Capabilities
from rung.records import Completion, Delta, GenerationRequest, Usage

from rung_llamacpp.options import DEFAULT_MAX_CONTEXT, LlamaCppOptions

INSTALL_HINT = ("pip install 'rung-llamacpp[llama-cpp]' (it builds llama.cpp from source: a C++ compiler and a "
                "few minutes; in rung's repository: bash scripts/ensure-llamacpp.sh)")


def import_llama_cpp() -> Any:
    """The llama_cpp module, or one RungError line saying how to install it."""
    try:
        import llama_cpp
    except ImportError as exc:
        raise RungError(f"backend 'llamacpp' needs llama-cpp-python, which is not installed ({exc}): "
                        f"{INSTALL_HINT}") from None
    return llama_cpp


class LlamaCppBackend(BaseBackend):
    """A `llama_cpp.Llama` (`.llama`) on `.gguf_path`, with the tokenizer of its model (`.tokenizer`)."""

    capabilities = Capabilities(chat=True, streaming=True, logprobs=True, trainable=False, structured_output=True)

    def __init__(self, options: LlamaCppOptions, tokenizer: Any = None, **_: Any) -> None:
        llama_cpp = import_llama_cpp()
        from rung_llamacpp.model_file import gguf_for
        from rung_llamacpp.tokenizer import LlamaCppTokenizer

        self.options = options
        source = Path(options.model).expanduser()
        self.gguf_path = gguf_for(source, options.outtype)
        self.name = source.name if source.is_dir() else source.stem
        self.llama, self.context_length = load_llama(llama_cpp, self.gguf_path, options)
        # Closed at exit by us, not by llama-cpp-python's finalizer during interpreter teardown.
        self._closer = weakref.finalize(self, self.llama.close)
        self.native_tokenizer = LlamaCppTokenizer(self.llama)
        if tokenizer is None and source.is_dir():
            tokenizer = _folder_tokenizer(source)
        self.tokenizer = tokenizer if tokenizer is not None else self.native_tokenizer
        if options.chat_template:
            self.tokenizer.chat_template = options.chat_template
        if self.tokenizer.vocab_size > self.native_tokenizer.vocab_size:
            raise ConfigError(f"backend 'llamacpp': the tokenizer has {self.tokenizer.vocab_size} tokens but the "
                              f"model's vocabulary is {self.native_tokenizer.vocab_size}")
        self.vocab_size = int(self.llama.n_vocab())
        self.stop_ids = self.native_tokenizer.end_of_generation_ids  # the same vocabulary, whichever tokenizer
        self._lock = threading.Lock()  # one sequence in the context at a time (released by any thread)

    def close(self) -> None:
        """Free llama.cpp's model and context now (also done at exit)."""
        self._closer()

    # -- requests

    def count_tokens(self, text: str) -> int:
        self._check_open()
        return len(self.tokenizer.encode(text))

    def _check_open(self) -> None:
        if not self._closer.alive:  # llama.cpp's memory is freed: touching it (even to tokenize) crashes
            raise RungError(f"backend 'llamacpp' ({self.name}) is closed: load the model again")

    def _prepare(self, request: GenerationRequest) -> tuple[list[int], Sampling]:
        self._check_open()
        return request_to_prompt(request, self.tokenizer, defaults_of(self.options), context=self.context_length,
                                 stop_ids=self.stop_ids)

    def generate(self, request: GenerationRequest) -> Completion:
        ids, sampling = self._prepare(request)
        decoder = RowDecoder(self.tokenizer, sampling, len(ids), incremental=False)
        for _ in self._decode(ids, sampling, decoder):
            pass
        return Completion(decoder.text, decoder.finish_reason or "length", _usage(decoder), self.name,
                          decoder.logprobs, decoder.prompt_logprobs)

    def stream(self, request: GenerationRequest) -> Iterator[Delta]:
        ids, sampling = self._prepare(request)
        decoder = RowDecoder(self.tokenizer, sampling, len(ids), incremental=True)
        for text in self._decode(ids, sampling, decoder):
            if decoder.done:
                yield Delta(text, decoder.finish_reason, _usage(decoder), self.name, decoder.take_logprobs())
            else:
                yield Delta(text, model=self.name, logprobs=decoder.take_logprobs())

    def generate_batch(self, requests: Sequence[GenerationRequest], max_concurrency: int = 8) -> list[Completion]:
        """The requests one after another, in order (one sequence per llama.cpp context)."""
        return [self.generate(request) for request in requests]

    # -- the decode loop

    def _decode(self, ids: list[int], sampling: Sampling, decoder: RowDecoder) -> Iterator[str]:
        """Text as the tokens are picked; the last piece is yielded when the decoder is done."""
        from rung_llamacpp.picking import choose, constrained, generator_for, seen_tokens, step_record

        records = LogprobRecords(self.tokenizer) if sampling.logprobs is not None else None
        guide = sampling.constraint.guide(sampling.stop_ids, sampling.max_tokens) \
            if sampling.constraint is not None else None
        generator = generator_for(sampling, self.options.seed)
        seen = seen_tokens(ids, sampling, self.vocab_size)  # None: no repetition penalty
        with self._lock:
            self._check_open()
            logits = self._prefill(ids, decoder, sampling, records)
            if decoder.done:  # max_tokens 0 (echo): the prompt was all there was to do
                yield ""
                return
            position = len(ids)
            while True:
                scores = logits
                if guide is not None and not guide.failed:
                    _, allowed = guide.allowed()
                    if allowed:
                        scores = constrained(logits, allowed)
                token = choose(scores, sampling, generator, seen)
                if seen is not None:
                    seen[token] = True
                text = decoder.push(token, step_record(logits, token, sampling, records) if records else None)
                if guide is not None and not decoder.done:
                    guide.advance(token)
                    if guide.finished:  # complete JSON and no stop id to end it
                        text += decoder.finish("stop")
                if not decoder.done and position + 1 >= self.context_length:
                    text += decoder.finish("length")  # prompt + answer fill the context
                if text or decoder.done:
                    yield text
                if decoder.done:
                    return
                logits = self._evaluate([token], position)
                position += 1

    def _prefill(self, ids: list[int], decoder: RowDecoder, sampling: Sampling,
                 records: LogprobRecords | None) -> Any:
        """Evaluate the prompt from an empty cache; the last position's logits. With echo and
        logprobs, every prompt token is scored by the logits of the position before it."""
        from rung_llamacpp.picking import log_softmax, top_entries

        self.llama._ctx.kv_cache_seq_rm(-1, 0, -1)
        if not (sampling.scores_prompt and records is not None):
            return self._evaluate(ids, 0)
        own: list[float] = []
        top_ids: list[list[int]] = []
        top_values: list[list[float]] = []

        def score(start: int, rows: Any) -> None:
            count = min(len(rows), len(ids) - 1 - start)  # the last position predicts no prompt token
            if count <= 0:
                return
            logprobs = log_softmax(rows[:count])
            for j in range(count):
                own.append(float(logprobs[j, ids[start + j + 1]]))
                if sampling.logprobs:
                    best, values = top_entries(logprobs[j], sampling.logprobs)
                    top_ids.append(best)
                    top_values.append(values)

        logits = self._evaluate(ids, 0, score)
        decoder.prompt_logprobs = records.prompt(ids, own, top_ids if sampling.logprobs else None,
                                                 top_values if sampling.logprobs else None)
        return logits

    def _evaluate(self, tokens: Sequence[int], start: int, every_position: Any = None) -> Any:
        """Decode `tokens` at positions start...; the last one's logits (vocab,), a copy.
        `every_position(offset, logits)`: called with each batch's logits (rows, vocab)."""
        import numpy as np

        llama = self.llama
        step = max(1, int(llama.n_batch))
        try:
            for first in range(0, len(tokens), step):
                chunk = list(tokens[first:first + step])
                llama._batch.set_batch(batch=chunk, n_past=start + first, logits_all=every_position is not None)
                llama._ctx.decode(llama._batch)
                if every_position is not None:
                    rows = np.ctypeslib.as_array(llama._ctx.get_logits(), shape=(len(chunk), self.vocab_size))
                    every_position(first, rows)
        except RuntimeError as exc:
            raise RungError(f"backend 'llamacpp': llama.cpp could not evaluate the tokens ({exc})") from None
        return np.ctypeslib.as_array(llama._ctx.get_logits_ith(-1), shape=(self.vocab_size,)).copy()

    def __repr__(self) -> str:
        return (f"LlamaCppBackend(model={self.name!r}, gguf={str(self.gguf_path)!r}, threads={self.options.threads}, "
                f"context={self.context_length})")


def load_llama(llama_cpp: Any, path: Path, options: LlamaCppOptions) -> tuple[Any, int]:
    """A `llama_cpp.Llama` on `path` as the options say, and its context in tokens: the one asked
    for (llama.cpp rounds its cache up to a multiple of 256). One RungError line where it cannot load."""
    import logging

    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # llama.cpp's own log: errors only
    threads = options.threads or None  # 0: llama-cpp-python's own default
    batch_threads = (options.batch_threads if options.batch_threads is not None else options.threads) or None
    trained, file_type = file_facts(llama_cpp, path)
    context = options.context_length or min(trained or DEFAULT_MAX_CONTEXT, DEFAULT_MAX_CONTEXT)
    # llama.cpp keeps its KV cache in f16 by default: an f32 file's scores then drift from
    # rung-torch's by ~1e-3 (more on some CPUs); an f32 file gets an f32 cache, as rung-torch has.
    cache = options.kv_cache if options.kv_cache != "auto" else ("f32" if file_type == 0 else "f16")
    cache_type = llama_cpp.GGML_TYPE_F32 if cache == "f32" else llama_cpp.GGML_TYPE_F16
    try:
        with quiet_stderr():  # llama.cpp warns of a context it rounded up past the trained one (256 for 128)
            llama = llama_cpp.Llama(str(path), n_ctx=context, n_batch=options.batch_size,
                                    n_ubatch=options.batch_size, n_threads=threads, n_threads_batch=batch_threads,
                                    type_k=cache_type, type_v=cache_type, logits_all=False, verbose=False)
        return llama, min(context, int(llama.n_ctx()))
    except (ValueError, RuntimeError, OSError) as exc:
        raise RungError(f"backend 'llamacpp': llama.cpp cannot load '{path}' ({' '.join(str(exc).split())})") \
            from None


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Nothing reaches stderr inside the block: llama.cpp's log comes through llama-cpp-python's
    callback (Python's sys.stderr) and from C (file descriptor 2)."""
    import io

    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null, contextlib.redirect_stderr(io.StringIO()):
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def file_facts(llama_cpp: Any, path: Path) -> tuple[int | None, int | None]:
    """The context the model was trained with (`<arch>.context_length`) and the file's
    `general.file_type` (0: every tensor f32, 1: mostly f16, ...), each None where unset; read
    with the vocabulary alone: no weights loaded, no context allocated."""
    import ctypes

    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(path).encode("utf-8"), params)
    if not model:
        raise RungError(f"backend 'llamacpp': llama.cpp cannot read '{path}' (a damaged or unsupported GGUF file)")
    try:
        def value(key: str) -> str | None:
            buffer = ctypes.create_string_buffer(256)
            n = llama_cpp.llama_model_meta_val_str(model, key.encode("utf-8"), buffer, len(buffer))
            return buffer.value.decode("utf-8", "replace") if n >= 0 else None

        def number(key: str) -> int | None:
            found = value(key)
            return int(found) if found and found.isdigit() else None

        arch = value("general.architecture")
        context = number(f"{arch}.context_length") if arch else None
        return (context if context else None), number("general.file_type")
    finally:
        llama_cpp.llama_model_free(model)


def _folder_tokenizer(folder: Path) -> Any:
    """The folder's own tokenizer (rung's or transformers'), or None (e.g. an adapter folder):
    llama.cpp's from the exported file is used then."""
    from rung.saved_tokenizer import load_saved_tokenizer

    try:
        return load_saved_tokenizer(folder, "llamacpp")
    except ConfigError:
        return None


def _usage(decoder: RowDecoder) -> Usage:
    return Usage(prompt_tokens=decoder.prompt_tokens, completion_tokens=decoder.generated)

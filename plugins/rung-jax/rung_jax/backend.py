"""The `jax` backend: rung's Llama-style model in Flax NNX, for generation and training."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from rung.decoding import RowDecoder, defaults_of, request_to_prompt
from rung.errors import ConfigError, RungError
from rung.interfaces import BaseBackend, Capabilities, Tokenizer
from rung.records import Completion, Delta, GenerationRequest, Usage
from rung.saved_tokenizer import load_saved_tokenizer
from rung_jax.options import JaxOptions


class JaxBackend(BaseBackend):
    """Holds a `rung_jax.model.Llama` (`.model`, an NNX module), its tokenizer and device mesh.

    `options.model` is a preset (a new model, vocabulary from the tokenizer) or a checkpoint
    directory (safetensors + config.json: rung's, from either framework, or a Hugging Face
    Llama), which also brings its tokenizer when it holds one. Requests become prompts and
    text through `rung.decoding`, the same rules as every local backend.
    """

    framework = "jax"
    capabilities = Capabilities(chat=True, streaming=True, logprobs=True, trainable=True, structured_output=True)

    def __init__(self, options: JaxOptions | None = None, tokenizer: Tokenizer | None = None, **_: Any) -> None:
        from rung_jax import runtime

        self.options = options if options is not None else JaxOptions()
        runtime.initialize_distributed(self.options.distributed)  # before anything touches a device
        import jax

        devices = runtime.select_devices(self.options.device)
        self.mesh = runtime.make_mesh(self.options.mesh, devices)
        platform = devices[0].platform
        self.precision = runtime.resolve_precision(self.options.precision, platform, "train")
        self.decode_precision = runtime.resolve_precision(self.options.precision, platform, "decode")
        # Place new weights on the mesh's first device. Only when that is not already the default:
        # a default_device context is part of jit's cache key, so it would recompile every
        # operation a model's initialisation runs, however often the process made the same model.
        place = jax.default_device(devices[0]) if devices[0] != jax.devices()[0] else contextlib.nullcontext()
        source = Path(self.options.model)
        if source.is_dir():
            if tokenizer is None:
                tokenizer = load_saved_tokenizer(source, "jax")
            from rung_jax.weights import load_model

            with place:
                model = load_model(source)
            self.name = source.name
        else:
            if tokenizer is None:
                raise ConfigError(f"backend 'jax': model '{self.options.model}' is a preset and needs a "
                                  "tokenizer (add a 'tokenizer' section, or pass tokenizer=)")
            try:
                config = self.options.resolve_architecture(vocab_size=tokenizer.vocab_size)
            except ValueError as exc:
                raise ConfigError(f"backend.model: {exc}") from None
            from rung_jax.model import init_model

            with place:
                model = init_model(config, seed=self.options.seed)
            self.name = self.options.model
        if tokenizer is not None and tokenizer.vocab_size > model.arch.vocab_size:
            raise ConfigError(f"backend 'jax': the tokenizer has {tokenizer.vocab_size} tokens but the "
                              f"model's vocabulary is {model.arch.vocab_size}")
        self.tokenizer = tokenizer
        self.model = model

    # -- what trainers use

    @property
    def config(self):
        """The architecture (`rung.model_config.ModelConfig`) of the model."""
        return self.model.config

    def engine(self):
        """The training loop; it reads `self.model` when `fit` starts (add LoRA adapters first)."""
        from rung_jax.engine import JaxEngine

        return JaxEngine(self, self.options, mesh=self.mesh, precision=self.precision)

    def adapters(self):
        """LoRA adapters on `self.model` (`rung.interfaces.Adapters`, Flax NNX, PEFT files)."""
        from rung_jax.lora import NnxAdapters

        return NnxAdapters(self)

    def frozen_copy(self):
        """An independent copy of `self.model` as it is now, in eval mode (`rung.interfaces`): new
        buffers (copied by a jitted function), so neither training nor the train step's buffer
        donation changes it. A reference policy for a trainer that trains every weight."""
        import jax
        import jax.numpy as jnp
        from flax import nnx

        graphdef, state = nnx.split(self.model)
        copied = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree))(state)
        frozen = nnx.merge(graphdef, copied)
        frozen.eval()
        return frozen

    def score_heads(self):
        """A scalar head on `self.model` (`rung.interfaces.ScoreHeads`): reward models, PPO's value."""
        from rung_jax.scoring import NnxScoreHeads

        return NnxScoreHeads(self)

    def save(self, directory: str | Path) -> None:
        """Weights (model.safetensors, HF Llama names), config.json and the tokenizer."""
        from rung_jax.weights import save_model

        save_model(self.model, directory)
        if self.tokenizer is not None:
            self.tokenizer.save(directory)

    def count_tokens(self, text: str) -> int:
        return len(self._tokenizer().encode(text))

    # -- generation

    def generate(self, request: GenerationRequest) -> Completion:
        from rung_jax.generation import generate_ids

        prompt, sampling = self._prepare(request)
        if sampling.stop or sampling.logprobs is not None:
            # Stop strings are watched token by token (stop as soon as one appears); log-probabilities
            # come from the step-by-step programs.
            decoder = RowDecoder(self._tokenizer(), sampling, len(prompt), incremental=True)
            for _ in self._deltas(prompt, sampling, decoder):
                pass
            return Completion(decoder.text, decoder.finish_reason or "length", _usage(decoder), self.name,
                              decoder.logprobs, decoder.prompt_logprobs)
        decoder = RowDecoder(self._tokenizer(), sampling, len(prompt), incremental=False)
        if decoder.done:  # max_tokens 0 (echo without logprobs): nothing to generate
            return Completion("", "length", _usage(decoder), self.name)
        for token in generate_ids(self.model, prompt, sampling, self._decode_dtype()):
            decoder.push(token)
            if decoder.done:
                break
        decoder.finish("length")
        return Completion(decoder.text, decoder.finish_reason or "length", _usage(decoder), self.name)

    def stream(self, request: GenerationRequest) -> Iterator[Delta]:
        prompt, sampling = self._prepare(request)
        decoder = RowDecoder(self._tokenizer(), sampling, len(prompt), incremental=True)
        yield from self._deltas(prompt, sampling, decoder)

    def _deltas(self, prompt: list[int], sampling: Any, decoder: RowDecoder) -> Iterator[Delta]:
        """One row's deltas, a token at a time (jitted prefill, then a jitted step each); with
        log-probabilities asked, each token's record goes to the decoder (and the prompt's, echo)."""
        from rung.decoding import LogprobRecords
        from rung_jax.generation import stream_ids, stream_scored

        tokens: Iterator[tuple[int, Any]] = iter(())
        if sampling.logprobs is not None:
            k, records = sampling.logprobs, LogprobRecords(self._tokenizer())
            if sampling.scores_prompt or not decoder.done:
                (own, values, ids), scored = stream_scored(self.model, prompt, sampling, self._decode_dtype())
                if sampling.scores_prompt:
                    decoder.prompt_logprobs = records.prompt(prompt, own, [i[:k] for i in ids],
                                                             [v[:k] for v in values])
                tokens = ((t, records.token(t, lp, top_ids[:k], top_values[:k]))
                          for t, (lp, top_values, top_ids) in scored)
        elif not decoder.done:
            tokens = ((t, None) for t in stream_ids(self.model, prompt, sampling, self._decode_dtype()))
        text = ""
        for token, entry in () if decoder.done else tokens:
            text = decoder.push(token, entry)
            if decoder.done:
                break
            if text:
                yield Delta(text, model=self.name, logprobs=decoder.take_logprobs())
                text = ""
        if not decoder.done:  # the context is full
            text += decoder.finish("length")
        yield Delta(text, decoder.finish_reason, _usage(decoder), self.name, decoder.take_logprobs())

    def generate_batch(self, requests: Sequence[GenerationRequest], max_concurrency: int = 8) -> list[Completion]:
        """One request at a time: each decode loop already uses every core."""
        return [self.generate(r) for r in requests]

    @property
    def decode_slots(self) -> Any:
        """`decode_slots(max_slots)`: a running decode batch of `max_slots` requests on this model
        (`rung.interfaces.DecodeSlots`, continuous batching in rung serve: `rung_jax.slots`);
        None (rung serve then answers one request at a time) when `continuous_batching` is off."""
        if not self.options.continuous_batching:
            return None
        return self._decode_slots

    def _decode_slots(self, max_slots: int = 32) -> Any:
        from rung_jax.slots import JaxDecodeSlots

        return JaxDecodeSlots(self, max_slots)

    def _decode_dtype(self):
        from rung_jax.runtime import DTYPES

        return DTYPES[self.decode_precision]

    def _prepare(self, request: GenerationRequest):
        defaults = defaults_of(self.options)
        return request_to_prompt(request, self._tokenizer(), defaults, context=self.model.arch.max_seq_len)

    def _tokenizer(self) -> Tokenizer:
        if self.tokenizer is None:
            raise RungError("backend 'jax' has no tokenizer: give the run a 'tokenizer' section")
        return self.tokenizer

    def __repr__(self) -> str:
        return f"JaxBackend(model={self.name!r}, mesh={dict(self.mesh.shape)}, precision={self.precision})"


def _usage(decoder) -> Usage:
    return Usage(prompt_tokens=decoder.prompt_tokens, completion_tokens=decoder.generated)

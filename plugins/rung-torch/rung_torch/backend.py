"""The `torch` backend: rung's own model in PyTorch, for generation and training."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from rung.decoding import RowDecoder, Sampling, defaults_of, request_to_prompt
from rung.errors import ConfigError, RungError
from rung.interfaces import BaseBackend, Capabilities, Tokenizer
from rung.records import Completion, Delta, GenerationRequest, Usage
from rung.saved_tokenizer import load_saved_tokenizer
from rung_torch.device import DTYPES, resolve_device, resolve_precision
from rung_torch.generate import generate_tokens
from rung_torch.modeling import load_adapter_option
from rung_torch.options import TorchOptions


class TorchBackend(BaseBackend):
    """Holds a `rung_torch.model.Transformer` (`.model`) and its tokenizer.

    `options.model` is a preset (a new model, vocabulary from the tokenizer) or a checkpoint
    directory (safetensors + config.json, rung's or a Hugging Face Llama's), which also
    brings its tokenizer when it holds one. Requests become prompts and text through
    `rung.decoding`, the same rules as every local backend.
    """

    framework = "torch"
    capabilities = Capabilities(chat=True, streaming=True, logprobs=True, trainable=True, structured_output=True)

    def __init__(self, options: TorchOptions | None = None, tokenizer: Tokenizer | None = None, **_: Any) -> None:
        self.options = options if options is not None else TorchOptions()
        self.device = resolve_device(self.options.device)
        self.precision = resolve_precision(self.options.precision, self.device, "train")
        self.decode_precision = resolve_precision(self.options.precision, self.device, "decode")
        source = Path(self.options.model)
        if source.is_dir():
            if tokenizer is None:
                tokenizer = load_saved_tokenizer(source, "torch")
            from rung_torch.weights import load_model

            model = load_model(source, device=self.device)
            self.name = source.name
        else:
            from rung.model_config import PRESETS

            if self.options.model not in PRESETS and ("/" in self.options.model or "\\" in self.options.model):
                raise ConfigError(
                    f"backend.model: '{self.options.model}' is not a checkpoint directory (it does not exist) "
                    f"nor a preset ({', '.join(PRESETS)})"
                )
            if tokenizer is None:
                raise ConfigError(
                    f"backend 'torch': model '{self.options.model}' is a preset and needs a tokenizer "
                    "(add a 'tokenizer' section, or pass tokenizer=)"
                )
            from rung_torch.model import Transformer

            try:
                config = self.options.resolve_architecture(vocab_size=tokenizer.vocab_size)
            except ValueError as exc:
                raise ConfigError(f"backend.model: {exc}") from None
            model = Transformer(config, seed=self.options.seed).to(self.device)
            self.name = self.options.model
        if tokenizer is not None and tokenizer.vocab_size > model.config.vocab_size:
            raise ConfigError(
                f"backend 'torch': the tokenizer has {tokenizer.vocab_size} tokens but the model's "
                f"vocabulary is {model.config.vocab_size}"
            )
        self.tokenizer = tokenizer
        # Eval mode until a trainer's loop says otherwise (it calls train()): generation then has
        # no modes to switch and back around every request.
        self.model = model.eval()
        if self.options.adapter:
            load_adapter_option(self, self.options.adapter)

    # -- what trainers use

    @property
    def config(self):
        """The architecture (`rung.model_config.ModelConfig`) of the model."""
        from rung_torch.modeling import unwrap

        return unwrap(self.model).config

    def engine(self):
        """The training loop, bound to `self.model` as it is now (a trainer may wrap it first)."""
        from rung_torch.engine import TorchEngine

        return TorchEngine(self.model, self.options, device=self.device, precision=self.precision)

    def adapters(self):
        """LoRA adapters on `self.model` (`rung.interfaces.Adapters`, through peft)."""
        from rung_torch.adapters import PeftAdapters

        return PeftAdapters(self)

    def score_heads(self):
        """A scalar head on `self.model` (`rung.interfaces.ScoreHeads`): reward models, PPO's values."""
        from rung_torch.scoring import TorchScoreHeads

        return TorchScoreHeads(self)

    def frozen_copy(self) -> Any:
        """A copy of the model as it is now: eval mode, no gradients, untouched by training."""
        return frozen_copy(self.model)

    def save(self, directory: str | Path) -> None:
        """Weights (model.safetensors), config.json and the tokenizer, as transformers reads them
        (the causal LM: a score head is saved by `score_heads().save_scorer`)."""
        from rung_torch.weights import save_weights

        save_weights(self.model, directory)
        if self.tokenizer is not None and _is_rank_zero():
            self.tokenizer.save(directory)

    def count_tokens(self, text: str) -> int:
        return len(self._tokenizer().encode(text))

    # -- generation

    def generate(self, request: GenerationRequest) -> Completion:
        return self.generate_batch([request])[0]

    def stream(self, request: GenerationRequest) -> Iterator[Delta]:
        prompt, sampling = self._prepare(request)
        decoder = RowDecoder(self._tokenizer(), sampling, len(prompt), incremental=True)
        for event in self._run([prompt], [sampling], [decoder]):
            if event.finish_reason is None:
                yield Delta(event.text, model=self.name, logprobs=event.logprobs)
            else:
                yield Delta(event.text, event.finish_reason, _usage(decoder), self.name, event.logprobs)

    def generate_batch(self, requests: Sequence[GenerationRequest], max_concurrency: int = 8) -> list[Completion]:
        """Decode up to `max_concurrency` requests at a time as one batch (left-padded)."""
        out: list[Completion] = []
        size = max(1, max_concurrency)
        for first in range(0, len(requests), size):
            chunk = [self._prepare(r) for r in requests[first:first + size]]
            decoders = [RowDecoder(self._tokenizer(), s, len(p), incremental=False) for p, s in chunk]
            for _ in self._run([p for p, _ in chunk], [s for _, s in chunk], decoders, consumer_computes=False):
                pass
            out += [Completion(d.text, d.finish_reason or "length", _usage(d), self.name, d.logprobs,
                               d.prompt_logprobs) for d in decoders]
        return out

    def decode_slots(self, max_slots: int = 32):
        """A running decode batch of `max_slots` requests on this model (`rung.interfaces.DecodeSlots`,
        continuous batching: `rung_torch.batching`)."""
        from rung_torch.batching import TorchDecodeSlots

        return TorchDecodeSlots(self, max_slots)

    def _run(self, prompts, rows, decoders, consumer_computes: bool = True):
        from rung_torch.modeling import eval_mode, unwrap

        model = unwrap(self.model)
        if hasattr(model, "get_base_model"):  # peft: the rung Transformer with adapters inside
            model = model.get_base_model()
        with eval_mode(model):
            yield from generate_tokens(model, prompts, rows, decoders, self.device, DTYPES[self.decode_precision],
                                       consumer_computes)

    def _prepare(self, request: GenerationRequest) -> tuple[list[int], Sampling]:
        defaults = defaults_of(self.options)
        return request_to_prompt(request, self._tokenizer(), defaults, context=self.config.max_seq_len)

    def _tokenizer(self) -> Tokenizer:
        if self.tokenizer is None:
            raise RungError("backend 'torch' has no tokenizer: give the run a 'tokenizer' section")
        return self.tokenizer

    def __repr__(self) -> str:
        return f"TorchBackend(model={self.name!r}, device={self.device}, precision={self.precision})"


def frozen_copy(model: Any) -> Any:
    """A deep copy of `model` (DDP/compile unwrapped; peft adapters kept) in eval mode with
    requires_grad False: its own tensors, so training the original never changes it."""
    import copy

    from rung_torch.modeling import unwrap

    model = unwrap(model)
    # Generation's flattened weights (`generate.FastForward`, cached on rung models) are not copied.
    memo = {id(m.__dict__[_FAST]): None for m in model.modules() if _FAST in m.__dict__}
    clone = copy.deepcopy(model, memo)
    for module in clone.modules():
        module.__dict__.pop(_FAST, None)
    clone.eval()
    clone.requires_grad_(False)
    return clone


_FAST = "_rung_fast_forward"


def _is_rank_zero() -> bool:
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _usage(decoder: RowDecoder) -> Usage:
    return Usage(prompt_tokens=decoder.prompt_tokens, completion_tokens=decoder.generated)

"""The vocabulary inside a GGUF file as a rung Tokenizer: what a bare .gguf model is tokenized with.

A model folder brings rung's own tokenizer (or transformers'), and the backend uses that one;
a GGUF file alone has only llama.cpp's. Text is encoded by llama.cpp (`llama_tokenize`, special
tokens parsed, as transformers parses them), and decoded as the bytes of each token's piece
joined, so the text of a list of tokens is the text of its parts (what streaming and
structured output count on). The chat template is the file's `tokenizer.chat_template`,
rendered as transformers renders chat templates (sandboxed Jinja, trimmed blocks).
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

from rung.errors import ConfigError, RungError
from rung.records import Message


class LlamaCppTokenizer:
    """llama.cpp's tokenizer of a loaded `llama_cpp.Llama`."""

    def __init__(self, llama: Any, chat_template: str | None = None) -> None:
        import llama_cpp

        self._lib = llama_cpp
        self._llama = llama
        self._vocab = llama_cpp.llama_model_get_vocab(llama.model)
        self.vocab_size = int(llama_cpp.llama_vocab_n_tokens(self._vocab))
        self.eos_id = self._token(llama_cpp.llama_vocab_eos(self._vocab))
        self.bos_id = self._token(llama_cpp.llama_vocab_bos(self._vocab))
        self.pad_id = self._token(llama_cpp.llama_vocab_pad(self._vocab))
        self.end_of_turn_id = self._token(llama_cpp.llama_vocab_eot(self._vocab))
        self._pieces: dict[int, bytes] = {}
        self._template = chat_template if chat_template is not None else llama.metadata.get("tokenizer.chat_template")

    def _token(self, value: int) -> int | None:
        return int(value) if 0 <= int(value) < self.vocab_size else None

    @cached_property
    def special_tokens(self) -> dict[str, int]:
        """Control tokens (`<|im_start|>`, `</s>`): markup, never shown as text."""
        control = self._lib.LLAMA_TOKEN_ATTR_CONTROL
        out: dict[str, int] = {}
        for i in range(self.vocab_size):
            if self._lib.llama_vocab_get_attr(self._vocab, i) & control:
                out[self._lib.llama_vocab_get_text(self._vocab, i).decode("utf-8", "replace")] = i
        return out

    @cached_property
    def end_of_generation_ids(self) -> frozenset[int]:
        """Every id llama.cpp says ends a generation (eos, eot, <|im_end|>, ...)."""
        return frozenset(i for i in range(self.vocab_size) if self._lib.llama_vocab_is_eog(self._vocab, i))

    # -- text and ids

    def encode(self, text: str) -> list[int]:
        return self._llama.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def encode_prompt(self, text: str) -> list[int]:
        """Ids of a text to continue: with bos first where the model's vocabulary asks for it."""
        return self._llama.tokenize(text.encode("utf-8"), add_bos=True, special=True)

    def piece(self, token: int) -> bytes:
        """The bytes of one token (a control token's: its text, as rung's tokenizers decode it)."""
        cached = self._pieces.get(token)
        if cached is None:
            size = 32
            while True:
                buffer = ctypes.create_string_buffer(size)
                n = self._lib.llama_token_to_piece(self._vocab, int(token), buffer, size, 0, True)
                if n >= 0:
                    break
                size = -n
            cached = self._pieces[token] = buffer.raw[:n]
        return cached

    def decode(self, ids: Sequence[int]) -> str:
        return b"".join(self.piece(int(i)) for i in ids).decode("utf-8", "replace")

    # -- chat

    @property
    def chat_template(self) -> str | None:
        return self._template or None

    @chat_template.setter
    def chat_template(self, template: str | None) -> None:
        self._template = template
        self.__dict__.pop("_compiled", None)

    @cached_property
    def _compiled(self) -> Any:
        import jinja2
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str) -> None:
            raise jinja2.exceptions.TemplateError(message)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
        env.globals["raise_exception"] = raise_exception
        try:
            return env.from_string(self._template or "")
        except jinja2.TemplateError as exc:
            raise ConfigError(f"backend 'llamacpp': the chat template is not valid Jinja ({exc})") from None

    def apply_chat_template(self, messages: Sequence[Message | Mapping[str, str]],
                            add_generation_prompt: bool = True) -> str:
        if not self._template:
            raise RungError("backend 'llamacpp': this GGUF file has no chat template (tokenizer.chat_template); "
                            "give one with the chat_template option, or send a plain prompt")
        import jinja2

        turns = [{"role": str(m["role"]), "content": str(m["content"])} if isinstance(m, Mapping)
                 else {"role": m.role, "content": m.content} for m in messages]
        bos = self._lib.llama_vocab_get_text(self._vocab, self.bos_id).decode() if self.bos_id is not None else ""
        eos = self._lib.llama_vocab_get_text(self._vocab, self.eos_id).decode() if self.eos_id is not None else ""
        try:
            return self._compiled.render(messages=turns, add_generation_prompt=add_generation_prompt,
                                         bos_token=bos, eos_token=eos)
        except jinja2.TemplateError as exc:
            raise RungError(f"backend 'llamacpp': the chat template failed: {' '.join(str(exc).split())}") from None

    def save(self, directory: str | Path) -> None:
        raise RungError("backend 'llamacpp': a GGUF file's tokenizer lives in the file and cannot be saved apart; "
                        "load the model folder it was exported from to get rung's tokenizer")

    def __repr__(self) -> str:
        return f"LlamaCppTokenizer(vocab_size={self.vocab_size})"

"""The `byte` and `bpe` tokenizers, both built on Hugging Face `tokenizers`.

Both save a standard `tokenizer.json` plus `tokenizer_config.json` and
`special_tokens_map.json`, so `transformers.AutoTokenizer.from_pretrained(dir)` loads what
rung saved and gives the same ids and, when it has one, the same chat template (none unless
given or learnt: see `rung_tokenizers.chat`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from rung.byte_level import bytes_to_unicode
from rung.errors import RungError
from rung.records import Message

from rung_tokenizers.chat import CHAT_TEMPLATE, render, resolve_template
from rung_tokenizers.options import DEFAULT_SPECIAL_TOKENS, BPETokenizerOptions, ByteTokenizerOptions

__all__ = ["CHAT_TEMPLATE", "BPETokenizer", "ByteTokenizer", "RungTokenizer", "load_tokenizer"]


class RungTokenizer:
    """A Hugging Face `tokenizers.Tokenizer` with rung's special tokens.

    Attributes follow `rung.interfaces.Tokenizer`: `vocab_size`, `special_tokens`
    (token -> id), `eos_id`, `bos_id` (both `<|endoftext|>`), `pad_id`. `end_of_turn_id` is
    the id of `<|end|>` (generation of a chat answer stops there), `None` without it.
    `chat_template` is None unless one was given or set (see `rung_tokenizers.chat`).
    """

    kind = "tokenizer"

    def __init__(self, hf: Any = None, *, special: Sequence[str] = DEFAULT_SPECIAL_TOKENS,
                 eos_token: str = "<|endoftext|>", pad_token: str | None = "<|pad|>",
                 chat_template: str | None = None) -> None:
        self._hf = hf
        self._special_names = list(special)
        self._eos_token = eos_token
        self._pad_token = pad_token
        self._chat_template = resolve_template(chat_template)

    # ------------------------------------------------------------------ properties

    @property
    def hf_tokenizer(self) -> Any:
        """The underlying `tokenizers.Tokenizer`."""
        self._require_trained()
        return self._hf

    @property
    def is_trained(self) -> bool:
        return self._hf is not None

    @property
    def vocab_size(self) -> int:
        self._require_trained()
        return self._hf.get_vocab_size(with_added_tokens=True)

    @property
    def special_tokens(self) -> dict[str, int]:
        self._require_trained()
        cached = getattr(self, "_special_cache", None)
        if cached is None or cached[0] is not self._hf:
            out = {}
            for token in self._special_names:
                token_id = self._hf.token_to_id(token)
                if token_id is not None:
                    out[token] = token_id
            cached = self._special_cache = (self._hf, out)
        return dict(cached[1])

    @property
    def eos_id(self) -> int | None:
        return self.special_tokens.get(self._eos_token)

    @property
    def bos_id(self) -> int | None:
        return self.eos_id

    @property
    def pad_id(self) -> int | None:
        return self.special_tokens.get(self._pad_token) if self._pad_token else None

    @property
    def end_of_turn_id(self) -> int | None:
        return self.special_tokens.get("<|end|>")

    @property
    def eos_token(self) -> str:
        return self._eos_token

    @property
    def chat_template(self) -> str | None:
        """The Jinja chat template, or None: a tokenizer learnt from text has none."""
        return self._chat_template

    @chat_template.setter
    def chat_template(self, template: str | None) -> None:
        self._chat_template = resolve_template(template, "chat_template")

    # ------------------------------------------------------------------ encoding

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special tokens written in the text become their ids."""
        self._require_trained()
        return self._hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """`encode` for many texts at once (parallel inside `tokenizers`)."""
        self._require_trained()
        encode = getattr(self._hf, "encode_batch_fast", self._hf.encode_batch)  # no offsets: faster
        return [e.ids for e in encode(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        self._require_trained()
        return self._hf.decode([int(i) for i in ids], skip_special_tokens=False)

    def token_to_id(self, token: str) -> int | None:
        self._require_trained()
        return self._hf.token_to_id(token)

    def apply_chat_template(self, messages: Sequence[Message | Mapping[str, str]],
                            add_generation_prompt: bool = True) -> str:
        """The conversation through this tokenizer's chat template (an error without one)."""
        if not self._chat_template:
            raise RungError(f"the {self.kind} tokenizer has no chat template: give it one "
                            "(tokenizer.chat_template: rung, or Jinja text)")
        tokens = {"bos_token": self._eos_token, "eos_token": self._eos_token, "pad_token": self._pad_token}
        return render(self._chat_template, messages, add_generation_prompt, tokens)

    # ------------------------------------------------------------------ saving

    def to_json(self) -> str:
        """The `tokenizer.json` text."""
        self._require_trained()
        return self._hf.to_str()

    def fingerprint(self) -> str:
        """sha256 of the tokenizer.json text: what token shards record to stay consistent."""
        return hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()

    def save(self, directory: str | Path) -> None:
        """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json."""
        self._require_trained()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._hf.save(str(directory / "tokenizer.json"))
        special = self.special_tokens
        others = [t for t in special if t not in (self._eos_token, self._pad_token)]
        tokens_map: dict[str, Any] = {
            "bos_token": self._eos_token,
            "eos_token": self._eos_token,
            "unk_token": None,
            "additional_special_tokens": others,
        }
        if self._pad_token and self._pad_token in special:
            tokens_map["pad_token"] = self._pad_token
        config: dict[str, Any] = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": 1_000_000_000,
            "clean_up_tokenization_spaces": False,
            "add_bos_token": False,
            "add_eos_token": False,
            **tokens_map,
            "rung_tokenizer": self.kind,
            "rung_special_tokens": self._special_names,
        }
        if self._chat_template:
            config["chat_template"] = self._chat_template
        (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        (directory / "special_tokens_map.json").write_text(json.dumps(tokens_map, indent=2) + "\n", encoding="utf-8")

    # ------------------------------------------------------------------ helpers

    def _require_trained(self) -> None:
        if self._hf is None:
            raise RungError(
                f"the {self.kind} tokenizer has no vocabulary yet: train it on a corpus "
                "(e.g. `rung prepare CONFIG`) or give `path:` to a tokenizer.json"
            )

    def __repr__(self) -> str:
        size = self._hf.get_vocab_size(with_added_tokens=True) if self._hf is not None else "untrained"
        return f"{type(self).__name__}(vocab_size={size})"


def _add_special(hf: Any, special: Sequence[str]) -> None:
    from tokenizers import AddedToken

    hf.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])


class ByteTokenizer(RungTokenizer):
    """Ids 0-255 are the bytes of the UTF-8 text; special tokens follow from id 256.

    Needs no training; any text round-trips exactly. With `path:` it loads one that `save()`
    wrote (its special tokens and chat template).
    """

    kind = "byte"

    def __init__(self, options: ByteTokenizerOptions | None = None, **_: Any) -> None:
        options = options or ByteTokenizerOptions()
        hf = _load_hf(options.path) if options.path else None
        settings = _settings(options, hf)
        super().__init__(hf or build_byte_tokenizer(settings["special"]), **settings)


def build_byte_tokenizer(special: Sequence[str]) -> Any:
    """A `tokenizers.Tokenizer` whose token i is byte i (a byte-level BPE with no merges)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {char: byte for byte, char in bytes_to_unicode().items()}
    hf = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    hf.decoder = decoders.ByteLevel()
    _add_special(hf, special)
    return hf


class BPETokenizer(RungTokenizer):
    """Byte-level BPE: GPT-2 style pre-tokenisation, trained with `tokenizers`' BpeTrainer.

    Special tokens get the first ids (0, 1, ...), then the 256 byte symbols, then merges.
    With `path:` it loads an existing tokenizer.json (with the special tokens and chat template
    saved beside it, when rung saved it) and is ready at once.
    """

    kind = "bpe"

    def __init__(self, options: BPETokenizerOptions | None = None, **_: Any) -> None:
        self.options = options or BPETokenizerOptions()
        hf = _load_hf(self.options.path) if self.options.path else None
        super().__init__(hf, **_settings(self.options, hf))

    def train(self, texts: Iterable[str]) -> None:
        """Learn the vocabulary from `texts`, streamed (at most `max_training_bytes`)."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        hf = Tokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=self.options.vocab_size,
            min_frequency=self.options.min_frequency,
            special_tokens=list(self.options.special_tokens),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        hf.train_from_iterator(_limit(texts, self.options.max_training_bytes), trainer=trainer)
        # Mark them special (so decoding with skip_special_tokens drops them, and text
        # holding them encodes them whole); their ids stay the first ones.
        _add_special(hf, self.options.special_tokens)
        self._hf = hf


def _limit(texts: Iterable[str], max_bytes: int | None) -> Iterator[str]:
    seen = 0
    for text in texts:
        yield text
        seen += len(text.encode("utf-8", "replace"))
        if max_bytes is not None and seen >= max_bytes:
            return


def _load_hf(path: str | Path) -> Any:
    from tokenizers import Tokenizer

    file = Path(path)
    if file.is_dir():
        file = file / "tokenizer.json"
    if not file.is_file():
        raise RungError(f"tokenizer file not found: {file}")
    try:
        return Tokenizer.from_file(str(file))
    except Exception as exc:
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RungError(f"{file}: not a valid tokenizer.json ({why})") from None


def _read_config(folder: Path) -> dict[str, Any]:
    config_file = folder / "tokenizer_config.json"
    if not config_file.is_file():
        return {}
    try:
        return json.loads(config_file.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise RungError(f"{config_file}: not valid JSON ({exc})") from None


def saved_settings(path: str | Path, hf: Any) -> dict[str, Any]:
    """What the folder of tokenizer.json `path` says about it: special tokens, eos, pad, chat
    template (tokenizer_config.json, or chat_template.jinja beside it, as transformers writes).

    Special tokens come from tokenizer_config.json when rung wrote it, else rung's defaults that
    the file contains plus the eos/pad/bos tokens it names.
    """
    file = Path(path)
    folder = file if file.is_dir() else file.parent
    config = _read_config(folder)
    special = config.get("rung_special_tokens")
    if special is None:
        special = [t for t in DEFAULT_SPECIAL_TOKENS if hf.token_to_id(t) is not None]
        for key in ("eos_token", "pad_token", "bos_token"):
            token = _token_text(config.get(key))
            if token and token not in special and hf.token_to_id(token) is not None:
                special.append(token)
    eos = _token_text(config.get("eos_token")) or "<|endoftext|>"
    if "pad_token" in config:
        pad = _token_text(config.get("pad_token"))
    else:
        pad = "<|pad|>" if hf.token_to_id("<|pad|>") is not None else None
    template = config.get("chat_template")
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        template = jinja.read_text(encoding="utf-8")
    if not isinstance(template, str):  # transformers' list of named templates: the default one
        template = next((t.get("template") for t in template or [] if t.get("name") == "default"), None)
    return {"special": list(special), "eos_token": eos, "pad_token": pad, "chat_template": template or None}


_OPTION_OF = {"special": "special_tokens", "eos_token": "eos_token", "pad_token": "pad_token",
              "chat_template": "chat_template"}


def _settings(options: Any, hf: Any) -> dict[str, Any]:
    """RungTokenizer's keyword arguments: the options, over what a `path:` folder saved
    (options set explicitly win over the saved ones)."""
    values = {key: getattr(options, name) for key, name in _OPTION_OF.items()}
    if hf is not None and options.path:
        saved = saved_settings(options.path, hf)
        for key, name in _OPTION_OF.items():
            if name not in options.model_fields_set:
                values[key] = saved[key]
    return values


def load_tokenizer(directory: str | Path) -> RungTokenizer:
    """Load a tokenizer that `save()` wrote (a folder with tokenizer.json), e.g. a checkpoint's.

    Its kind (byte or bpe), special tokens, eos, pad and chat template come from the files
    saved beside it (`saved_settings`). Any byte-level tokenizer.json loads this way.
    """
    directory = Path(directory)
    file = directory / "tokenizer.json" if directory.is_dir() else directory
    if not file.is_file():
        raise RungError(f"tokenizer file not found: {file}")
    kind = _read_config(file.parent).get("rung_tokenizer")
    if kind == "byte":
        return ByteTokenizer(ByteTokenizerOptions(path=str(file)))
    return BPETokenizer(BPETokenizerOptions(path=str(file)))


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value

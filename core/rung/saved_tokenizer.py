"""Which tokenizer a model folder holds, loaded: what a checkpoint brings when no tokenizer is given.

A folder that rung-tokenizers wrote (its tokenizer_config.json names the kind: `byte`,
`bpe`) loads through that registered tokenizer, so no framework plugin imports rung-tokenizers;
transformers' files (a downloaded or rung-hf-saved model) load through the one
transformers adapter (`rung.transformers_tokenizer`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rung.errors import ConfigError, PluginError

TRANSFORMERS_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json")


def load_saved_tokenizer(directory: str | Path, backend: str) -> Any:
    """The tokenizer saved in `directory`; `backend` names who asks, for the error messages."""
    directory = Path(directory)
    config: dict[str, Any] = {}
    config_file = directory / "tokenizer_config.json"
    if config_file.is_file():
        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
        except ValueError:
            config = {}
    kind = config.get("rung_tokenizer")
    if kind is None and (directory / "tokenizer.json").is_file() and not config_file.is_file():
        kind = "bpe"  # a bare tokenizer.json: rung's byte-level loader reads any such file
    if kind is not None:
        from rung.api import tokenizer

        try:
            return tokenizer(str(kind), path=str(directory))
        except PluginError:
            raise ConfigError(
                f"backend '{backend}': {directory} holds a '{kind}' tokenizer (rung-tokenizers); install "
                "rung-tokenizers to read it, or add a 'tokenizer' section"
            ) from None
    if any((directory / name).is_file() for name in TRANSFORMERS_FILES):
        from rung.transformers_tokenizer import TransformersTokenizer

        return TransformersTokenizer.load(directory)
    raise ConfigError(
        f"backend '{backend}': {directory} holds no tokenizer (tokenizer.json): add a 'tokenizer' section"
    )

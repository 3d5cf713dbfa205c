"""The `hf` tokenizer: any transformers tokenizer, through the core's one adapter.

`HFTokenizer` is `rung.transformers_tokenizer.TransformersTokenizer` built from options (a
directory or hub id, found offline as rung-hf finds models); `as_hf_tokenizer` gives the
transformers object the `hf` backend needs for any rung Tokenizer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rung.errors import RungError
from rung.transformers_tokenizer import TransformersTokenizer, is_transformers_tokenizer

from rung_hf.options import HFTokenizerOptions


class HFTokenizer(TransformersTokenizer):
    """A transformers tokenizer (`.hf`) behind rung's Tokenizer interface (see the adapter)."""

    def __init__(self, options: HFTokenizerOptions | None = None, *, hf: Any = None, **_: Any) -> None:
        if hf is None:
            if options is None:
                raise TypeError("HFTokenizer needs options (path=...) or hf=<a transformers tokenizer>")
            from rung_hf.loading import load_tokenizer

            hf = load_tokenizer(options.path, field="tokenizer.path", revision=options.revision,
                                trust_remote_code=options.trust_remote_code,
                                local_files_only=options.local_files_only)
        super().__init__(hf)
        if options is not None and options.chat_template:
            self.chat_template = options.chat_template

    @classmethod
    def from_pretrained(cls, path: str, **options: Any) -> HFTokenizer:
        """`HFTokenizer.from_pretrained("dir or org/name", revision=..., chat_template=...)`."""
        return cls(HFTokenizerOptions(path=str(path), **options))


def as_hf_tokenizer(tokenizer: Any) -> Any:
    """A transformers tokenizer for any rung Tokenizer (its own, or loaded from what it saves),
    or for a folder / hub id given as a string (`rung.backend("hf", model=..., tokenizer="dir")`)."""
    if isinstance(tokenizer, TransformersTokenizer):
        return tokenizer.hf
    if isinstance(tokenizer, (str, Path)):
        from rung_hf.loading import load_tokenizer

        return load_tokenizer(str(tokenizer), field="backend.tokenizer")
    if is_transformers_tokenizer(tokenizer):
        return tokenizer
    import tempfile

    from rung_hf.loading import load_tokenizer

    if not hasattr(tokenizer, "save"):
        raise RungError(f"the hf backend cannot use tokenizer {type(tokenizer).__name__}: it cannot save itself")
    with tempfile.TemporaryDirectory(prefix="rung-hf-tok-") as tmp:
        tokenizer.save(tmp)
        hf = load_tokenizer(tmp, field="tokenizer")
        # Keep the transformers object usable after the folder is gone.
        hf.name_or_path = type(tokenizer).__name__
    return hf

"""The tokenizer as GGUF metadata: byte-level BPE written as llama.cpp's `gpt2` vocabulary.

llama.cpp splits text with a pre-tokenizer it knows by name (`tokenizer.ggml.pre`) and then
applies the merges; it does not run a `tokenizer.json`. So only tokenizers whose splitting
llama.cpp reproduces exactly are written: GPT-2's byte-level regex (rung's `bpe`, GPT-2 style
transformers tokenizers) as `gpt-2`, Llama 3's split regex as `llama-bpe`, and a byte-level
vocabulary without merges (rung's `byte`), where any split gives the same bytes. Everything
else (sentencepiece, WordPiece, a normalizer, another regex) is refused in one line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rung_gguf.source import refuse

# llama.cpp's token types (llama.h): what each entry of tokenizer.ggml.token_type says.
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5

GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


@dataclass
class Vocab:
    """Everything `tokenizer.*` in the GGUF file says."""

    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    pre: str
    bos_id: int | None = None
    eos_id: int | None = None
    pad_id: int | None = None
    unk_id: int | None = None
    eot_id: int | None = None
    add_bos: bool = False
    add_eos: bool = False
    chat_template: str | None = None
    special_text: dict[str, str] = field(default_factory=dict)  # bos/eos/pad/unk -> token text

    def write(self, writer: Any) -> None:
        """Add the tokenizer keys to a GGUFWriter."""
        from gguf import GGUFValueType, Keys

        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        writer.add_token_types(self.token_types)
        # llama.cpp requires the key even when a byte vocabulary has no merges; add_array skips empty lists
        writer.add_key_value(Keys.Tokenizer.MERGES, self.merges, GGUFValueType.ARRAY, sub_type=GGUFValueType.STRING)
        for value, add in ((self.bos_id, writer.add_bos_token_id), (self.eos_id, writer.add_eos_token_id),
                           (self.pad_id, writer.add_pad_token_id), (self.unk_id, writer.add_unk_token_id),
                           (self.eot_id, writer.add_eot_token_id)):
            if value is not None:
                add(value)
        writer.add_add_bos_token(self.add_bos)
        writer.add_add_eos_token(self.add_eos)
        if self.chat_template:
            writer.add_chat_template(self.chat_template)


def read_vocab(source: Path, vocab_size: int, config_bos: int | None, config_eos: int | None) -> Vocab:
    """The tokenizer saved in `source` as GGUF vocabulary, padded to the embedding's `vocab_size` rows."""
    file = source / "tokenizer.json"
    if not file.is_file():
        raise refuse(source, "no tokenizer.json (a byte-level BPE tokenizer is exported with the model)")
    try:
        spec = json.loads(file.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise refuse(source, f"tokenizer.json is not valid JSON ({exc})") from None
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback") or not _is_byte_level(spec):
        kind = model.get("type", "unknown")
        raise refuse(source, f"its tokenizer is not byte-level BPE (tokenizer.json model {kind}"
                             f"{', byte_fallback' if model.get('byte_fallback') else ''}); llama.cpp's gpt2 "
                             "vocabulary needs one")
    if spec.get("normalizer"):
        raise refuse(source, f"tokenizer.json has a normalizer ({spec['normalizer'].get('type')}), "
                             "which llama.cpp does not apply")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    pre = _pre_tokenizer_name(source, spec.get("pre_tokenizer"), bool(merges))

    by_id: dict[int, tuple[str, int]] = {i: (t, NORMAL) for t, i in (model.get("vocab") or {}).items()}
    for added in spec.get("added_tokens") or []:
        by_id[int(added["id"])] = (added["content"], CONTROL if added.get("special") else USER_DEFINED)
    size = max(by_id) + 1 if by_id else 0
    if size > vocab_size:
        raise refuse(source, f"the tokenizer has {size} tokens but the embedding has {vocab_size} rows")
    tokens, types = [], []
    for i in range(vocab_size):  # llama.cpp needs one entry per embedding row
        text, kind = by_id.get(i, (f"[PAD{i}]", UNUSED))
        tokens.append(text)
        types.append(kind)
    ids = {t: i for i, t in enumerate(tokens)}

    config = _read_json(source / "tokenizer_config.json")
    special = {key: _token_text(config.get(f"{key}_token")) for key in ("bos", "eos", "pad", "unk")}
    special = {k: v for k, v in special.items() if v is not None and v in ids}
    vocab = Vocab(tokens=tokens, token_types=types, merges=merges, pre=pre, special_text=special,
                  chat_template=_chat_template(source, config))
    vocab.bos_id = ids.get(special.get("bos")) if "bos" in special else config_bos
    vocab.eos_id = ids.get(special.get("eos")) if "eos" in special else config_eos
    vocab.pad_id = ids.get(special["pad"]) if "pad" in special else None
    vocab.unk_id = ids.get(special["unk"]) if "unk" in special else None
    for key, value in (("bos", vocab.bos_id), ("eos", vocab.eos_id)):
        if key not in special and value is not None and 0 <= value < len(tokens):
            special[key] = tokens[value]

    added_first, added_last = _post_processor_specials(spec.get("post_processor"))
    add_bos = config.get("add_bos_token")
    vocab.add_bos = bool(add_bos) if isinstance(add_bos, bool) else added_first is not None
    if added_first is not None and added_first in ids:  # the token the tokenizer really puts first
        vocab.bos_id = ids[added_first]
        special["bos"] = added_first
    add_eos = config.get("add_eos_token")
    vocab.add_eos = bool(add_eos) if isinstance(add_eos, bool) else added_last is not None
    return vocab


def _is_byte_level(spec: dict[str, Any]) -> bool:
    """The tokenizer maps bytes to GPT-2's printable alphabet (a ByteLevel pre-tokenizer or decoder)."""
    def has_byte_level(part: Any) -> bool:
        if not isinstance(part, dict):
            return False
        if part.get("type") == "ByteLevel":
            return True
        return any(has_byte_level(p) for p in part.get("pretokenizers") or part.get("decoders") or [])

    return has_byte_level(spec.get("pre_tokenizer")) and has_byte_level(spec.get("decoder"))


def _pre_tokenizer_name(source: Path, pre: Any, has_merges: bool) -> str:
    """The name llama.cpp knows for this splitting, or a refusal naming what it is."""
    parts = pre.get("pretokenizers") if pre.get("type") == "Sequence" else [pre]
    *splits, last = parts
    if last.get("type") != "ByteLevel" or last.get("add_prefix_space"):
        raise refuse(source, "its pre-tokenizer is not a plain ByteLevel (no prefix space) step, "
                             "which llama.cpp's gpt2 vocabulary cannot reproduce")
    if not splits and (last.get("use_regex", True) or not has_merges):
        return "gpt-2"  # GPT-2's own regex; a vocabulary with no merges tokenizes to bytes however it splits
    if len(splits) == 1 and splits[0].get("type") == "Split" and not last.get("use_regex", True):
        pattern = (splits[0].get("pattern") or {}).get("Regex")
        if pattern == LLAMA3_REGEX and splits[0].get("behavior") == "Isolated" and not splits[0].get("invert"):
            return "llama-bpe"
        if pattern == GPT2_REGEX:
            return "gpt-2"
    described = " + ".join(p.get("type", "?") for p in parts)
    raise refuse(source, f"its pre-tokenizer ({described}) is not one llama.cpp knows by name "
                         "(GPT-2's or Llama 3's split); its tokens would differ there")


def _post_processor_specials(post: Any) -> tuple[str | None, str | None]:
    """The special tokens a TemplateProcessing post-processor puts before and after a single text."""
    if not isinstance(post, dict):
        return None, None
    if post.get("type") == "Sequence":
        found = [_post_processor_specials(p) for p in post.get("processors") or []]
        return (next((f for f, _ in found if f), None), next((la for _, la in found if la), None))
    if post.get("type") != "TemplateProcessing":
        return None, None
    single = post.get("single") or []
    first = single[0].get("SpecialToken", {}).get("id") if single else None
    last = single[-1].get("SpecialToken", {}).get("id") if len(single) > 1 else None
    return first, last


def _chat_template(source: Path, config: dict[str, Any]) -> str | None:
    jinja = source / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    template = config.get("chat_template")
    if isinstance(template, list):  # transformers' named templates: the default one
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    return template if isinstance(template, str) and template else None


def _read_json(file: Path) -> dict[str, Any]:
    if not file.is_file():
        return {}
    try:
        value = json.loads(file.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise refuse(file.parent, f"{file.name} is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise refuse(file.parent, f"{file.name} is not a JSON object")
    return value


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


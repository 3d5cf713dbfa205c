"""Each cleaning step on its own (datatrove steps run in-process), with what it reports."""

from __future__ import annotations

import unicodedata

from datatrove.data import Document

from rung_pretrain.dedup import MinhashSignatures
from rung_pretrain.filters import ControlChars, LengthFilter, Normalize, QualityFilter, Strip


def run(step, texts):
    docs = [Document(text=t, id=str(i)) for i, t in enumerate(texts)]
    out = [d.text for d in step(iter(docs))]
    return out, {k: v.total for k, v in step.stats.stats.items()}


def test_normalize_to_nfc():
    decomposed = unicodedata.normalize("NFD", "café naïve")
    out, stats = run(Normalize("NFC"), [decomposed, "plain"])
    assert out == ["café naïve", "plain"] and stats["changed"] == 1
    assert stats["bytes_in"] > stats["bytes_out"]  # NFC is shorter here


def test_control_characters_removed_but_whitespace_kept():
    out, stats = run(ControlChars(), ["a\x00b\x07c\x1b[0m\td\ne\r\n\x0cf\x7f\x85", "clean"])
    assert out == ["abc[0m\td\ne\r\n\x0cf", "clean"] and stats["changed"] == 1


def test_strip_and_length_filters():
    out, _ = run(Strip(), ["text  \n\n", "  lead"])
    assert out == ["text", "  lead"]
    out, stats = run(LengthFilter(min_chars=3, max_chars=10), ["", "ab", "abcd", "x" * 11])
    assert out == ["abcd"]
    assert stats["removed/empty"] == 1 and stats["removed/too_short"] == 1 and stats["removed/too_long"] == 1
    assert stats["removed_bytes/too_long"] == 11


def test_quality_heuristics_each_say_why():
    good = "def f(x):\n    return x + 1\n" * 3
    blob = "0, 1, 22, 333, 4e5, 0x1f, " * 40  # a table of numbers
    minified = "var a=1;" * 3000
    boiler = "\n".join(["Copyright (c) all rights reserved."] * 20 + ["real content line here"] * 2)
    out, stats = run(QualityFilter(min_alpha_fraction=0.25, max_line_chars=20_000, max_duplicate_line_fraction=0.5),
                     [good, blob, minified, boiler, "ünïcödé wörds ✓ " * 3])
    assert out == [good, "ünïcödé wörds ✓ " * 3]
    assert (
        stats["removed/few_letters"] == 1 and stats["removed/long_line"] == 1 and stats["removed/repeated_lines"] == 1
    )


def test_minhash_shingles_see_near_duplicates(tmp_path):
    from datatrove.pipeline.dedup.minhash import MinhashConfig

    step = MinhashSignatures(str(tmp_path), MinhashConfig())
    words = " ".join(f"word{i}" for i in range(300))
    near = words.replace("word150", "WORD150 changed")
    other = " ".join(f"other{i}" for i in range(300))
    sig = [step.get_signature(step.get_shingles(t)) for t in (words, near, other)]
    same = lambda a, b: sum(x == y for x, y in zip(a, b))  # noqa: E731  buckets that collide
    assert same(sig[0], sig[1]) >= 4 and same(sig[0], sig[2]) == 0
    assert step.get_shingles("too few words").size == 0

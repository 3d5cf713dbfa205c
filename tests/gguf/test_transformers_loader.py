"""The exported file loaded by transformers' own GGUF loader computes what the original does:
logits within the output type's rounding, the same greedy tokens, the same token ids."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rung.exporting import export
from tests.gguf.models import FUZZ, PROMPTS, gguf_model, greedy, original_model

# Largest |logit difference| allowed, relative to the largest |logit|: a weight rounded to f16
# is off by up to 2^-11 of itself, bf16 2^-8, q8_0 up to half a step of max|block| / 127.
TOLERANCE = {"f32": 1e-5, "f16": 5e-3, "bf16": 4e-2, "q8_0": 1e-1}
TEXT = "the cat sat on a mat and the dog ran to the park while birds sang songs of rain. def f(x): return x"


def compare(folder: Path, written: Path, outtype: str, same_greedy: bool = True) -> None:
    from transformers import AutoTokenizer

    original, original_ids = original_model(folder), AutoTokenizer.from_pretrained(str(folder))
    logits_of, encode = gguf_model(written)
    ids = torch.tensor([original_ids(TEXT).input_ids])
    with torch.no_grad():
        expected, got = original(ids), logits_of(ids)
    scale = expected.abs().max().item()
    assert (got - expected).abs().max().item() <= TOLERANCE[outtype] * scale
    if same_greedy:
        for prompt in PROMPTS:
            start = original_ids(prompt).input_ids
            assert greedy(logits_of, start) == greedy(original, start), prompt
    else:  # q8_0: the argmax of nearly tied logits may differ; the first step mostly agrees
        agree = [greedy(logits_of, original_ids(p).input_ids, 1) == greedy(original, original_ids(p).input_ids, 1)
                 for p in PROMPTS]
        assert sum(agree) >= len(PROMPTS) - 2
    # transformers' GGUF loader builds a GPT2Tokenizer, which adds GPT-2's "<|endoftext|>" as a special
    # token even to a vocabulary without it (the file does not name it; llama.cpp splits it as text)
    fuzz = [t for t in FUZZ if "<|endoftext|>" not in t or "<|endoftext|>" in original_ids.get_vocab()]
    mismatched = [text for text in fuzz if encode(text) != original_ids(text).input_ids]
    assert not mismatched


@pytest.mark.parametrize("outtype", ["f16", "bf16", "q8_0"])
def test_rung_torch_model(rung_model, tmp_path, outtype):
    written = export("gguf", rung_model, tmp_path / f"rung-{outtype}.gguf", {"outtype": outtype})
    compare(rung_model, written, outtype, same_greedy=outtype != "q8_0")


def test_rung_tokenizer_itself_agrees(rung_model, tmp_path):
    """rung's own BPE encoder (what rung-torch trains with), not only transformers' reading of its files."""
    from rung.saved_tokenizer import load_saved_tokenizer

    _, encode = gguf_model(export("gguf", rung_model, tmp_path / "r.gguf"))
    ours = load_saved_tokenizer(rung_model, "test")
    assert [encode(text) for text in FUZZ] == [list(ours.encode(text)) for text in FUZZ]


@pytest.mark.parametrize("outtype", ["f32", "f16"])
def test_transformers_llama(hf_llama, tmp_path, outtype):
    written = export("gguf", hf_llama, tmp_path / f"llama-{outtype}.gguf", {"outtype": outtype})
    compare(hf_llama, written, outtype)


def test_llama3_split_is_named_llama_bpe_and_tokenizes_alike(hf_llama, tmp_path):
    """Llama 3's split regex is written as pre-tokenizer `llama-bpe`; a regex llama.cpp has no name for is refused."""
    import json
    import shutil

    from transformers import AutoTokenizer

    from rung.errors import ConfigError
    from rung_gguf.vocab import LLAMA3_REGEX

    folder = tmp_path / "llama3-split"
    shutil.copytree(hf_llama, folder)
    spec = json.loads((folder / "tokenizer.json").read_text())
    split = {"type": "Split", "pattern": {"Regex": LLAMA3_REGEX}, "behavior": "Isolated", "invert": False}
    spec["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        split, {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    written = export("gguf", folder, tmp_path / "out" / "l3.gguf")
    from gguf import GGUFReader

    assert GGUFReader(str(written)).fields["tokenizer.ggml.pre"].contents() == "llama-bpe"
    original = AutoTokenizer.from_pretrained(str(folder))
    _, encode = gguf_model(written)
    fuzz = [t for t in FUZZ if "<|endoftext|>" not in t]  # see compare()
    assert [encode(t) for t in fuzz] == [original(t).input_ids for t in fuzz]

    split["pattern"]["Regex"] = r"\p{L}+|\s+"
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(ConfigError, match="pre-tokenizer .Split . ByteLevel. is not one llama.cpp knows"):
        export("gguf", folder, tmp_path / "out2" / "x.gguf")


def test_a_byte_vocabulary_without_merges(tmp_path):
    """rung's `byte` tokenizer (what the ladder and many examples train with) has no merges: the file
    still carries the (empty) merges key llama.cpp requires, and reads back alike."""
    import rung

    folder = tmp_path / "byte-model"
    tokenizer = rung.tokenizer("byte", chat_template="rung")
    backend = rung.backend("torch", tokenizer=tokenizer, model="test", device="cpu", precision="fp32",
                           architecture={"init_std": 0.3})
    backend.save(folder)
    written = export("gguf", folder, tmp_path / "byte.gguf", {"outtype": "f32"})
    assert not written.with_name(written.name + ".partial").exists()
    from gguf import GGUFReader

    fields = GGUFReader(str(written)).fields
    assert "tokenizer.ggml.merges" in fields and len(fields["tokenizer.ggml.merges"].data) == 0
    compare(folder, written, "f32")


def test_a_failed_write_leaves_no_partial_file(rung_model, tmp_path, monkeypatch):
    import gguf

    def broken(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", broken)
    from rung.errors import RungError

    with pytest.raises(RungError, match=r"full.gguf: cannot write the GGUF file \(No space left on device\)"):
        export("gguf", rung_model, tmp_path / "full.gguf")
    assert list(tmp_path.iterdir()) == []

"""The models the GGUF tests export, saved to disk as a user has them, and how each is read back.

- rung's own: a rung-torch `test`-preset model (tied embeddings, grouped-query attention, an
  embedding with more rows than the tokenizer has tokens) with rung's byte-level BPE and its
  chat template;
- transformers': the tiny LlamaForCausalLM of tests/hf (untied, a Llama-3 style tokenizer that
  adds `<|begin_of_text|>`);
- a PEFT LoRA adapter on that Llama, with non-zero factors so merging changes the model.
"""

from __future__ import annotations

from pathlib import Path

# Code, Unicode, whitespace runs, emoji, special tokens in text, digits, nothing at all.
FUZZ = [
    "", " ", "  ", "\n", "\n\n\n", "\t\tx", "hello world", " hello", "Hello,   world!!  ",
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "for (int i = 0; i < 10; ++i) { x[i] = i * 2; }  // C",
    "import os, sys\r\nprint(os.getcwd())\r\n",
    "Ünïcödé façade — naïve café 日本語 😀 123 456.",
    "emoji 😀😃🤖🫠 👩‍👩‍👧 ✨🚀", "Ελληνικά κείμενο και русский текст", "مرحبا بالعالم", "한국어 텍스트",
    "   leading and trailing   ", "tabs\tand\tnewlines\n\t\n", "1234567890 3.14159 -42 1e-5",
    "the cat sat on a mat<|endoftext|>and the dog ran", "<|user|>\nhi<|end|>\n<|assistant|>\n",
    "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>",
    "don't won't I'm you'll they've we'd", "a\u00a0b\u2003c\u200bd", "\u0301 combining e\u0301",
    "x" * 50, "😀" * 5 + " " * 7 + "end",
]

PROMPTS = ["the cat", "def fib(n):", "Ünïcödé 日本語", "   the dog ran to", "1 2 3 4", "birds sang songs of rain"]


def save_rung_model(directory: Path) -> Path:
    """A rung-torch model and rung's BPE tokenizer (chat template `rung`), saved by the backend."""
    import rung
    from tests.hf.hf_models import corpus

    tokenizer = rung.tokenizer("bpe", vocab_size=400, chat_template="rung")
    tokenizer.train(corpus())
    # 16 rows more than tokens: the file pads the vocabulary as llama.cpp needs one token a row
    rows = tokenizer.vocab_size + 16
    backend = rung.backend("torch", tokenizer=tokenizer, model="test", device="cpu", precision="fp32",
                           architecture={"init_std": 0.3, "vocab_size": rows})
    backend.save(directory)
    return directory


def save_hf_llama(directory: Path) -> Path:
    from tests.hf.hf_models import save_tiny_model

    return save_tiny_model("llama", directory)


def save_lora_adapter(base: Path, directory: Path) -> Path:
    """A PEFT LoRA adapter on `base` (q, v and MLP projections), its factors random and non-zero."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(base))
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj", "down_proj"])
    peft_model = get_peft_model(model, config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    peft_model.save_pretrained(str(directory))
    AutoTokenizer.from_pretrained(str(base)).save_pretrained(str(directory))
    return directory


def merged_reference(base: Path, adapter: Path):
    """The adapter merged by PEFT itself: what the exported file should compute."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base))
    return PeftModel.from_pretrained(model, str(adapter)).merge_and_unload().eval()


def original_model(directory: Path):
    """logits(ids) of the folder as its own framework runs it: rung-torch for rung's, transformers otherwise."""
    import json

    if "rung_tokenizer" in json.loads((directory / "tokenizer_config.json").read_text()):
        from rung_torch.weights import load_model

        model = load_model(directory).eval()
        return lambda ids: model(ids)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(directory)).eval()
    return lambda ids: model(ids).logits


def original_tokenizer(directory: Path):
    """encode(text) -> ids with the folder's own tokenizer (rung's loader, or transformers')."""
    from rung.saved_tokenizer import load_saved_tokenizer

    tokenizer = load_saved_tokenizer(directory, "test")
    return tokenizer.encode


def gguf_model(gguf_file: Path):
    """logits(ids) and encode(text) of the GGUF file as transformers' own GGUF loader reads it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name)
    return (lambda ids: model(ids).logits), (lambda text: tokenizer(text).input_ids)


def greedy(logits_of, ids: list[int], steps: int = 12) -> list[int]:
    """The tokens argmax decoding adds to `ids` (full forward each step: no cache to differ in)."""
    import torch

    ids = list(ids)
    with torch.no_grad():
        for _ in range(steps):
            ids.append(int(logits_of(torch.tensor([ids]))[0, -1].argmax()))
    return ids

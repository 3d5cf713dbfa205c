"""Tiny random-initialised transformers models of three families, saved as a user's download.

Each family gets its own tokenizer class and chat format, as the real checkpoints have:
Llama (Llama-3 style byte-level BPE, bos added, <|eot_id|> ends a turn), GPT-2 (no chat
template, no pad token) and Qwen2 (ChatML, <|im_end|> ends a turn).
"""

from __future__ import annotations

import json
from pathlib import Path

WORDS = ("the cat sat on a mat and the dog ran to the park while birds sang songs of "
         "rain sun wind over hills rivers stones trees light dark morning evening night").split()

LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + m['content'] + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
CHATML_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def corpus(n: int = 400) -> list[str]:
    import random

    rng = random.Random(0)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))) + "." for _ in range(n)] + [
        "Ünïcödé façade — naïve café 日本語 😀 123 456."
    ]


def train_bpe(special: list[str], vocab_size: int = 400) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A byte-level BPE vocabulary and merges (GPT-2 style), special tokens first."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus(), trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return model["vocab"], merges


def build_tokenizer(family: str):
    from transformers import GPT2Tokenizer, PreTrainedTokenizerFast, Qwen2Tokenizer

    if family == "gpt2":
        vocab, merges = train_bpe(["<|endoftext|>"])
        return GPT2Tokenizer(vocab=vocab, merges=merges)
    if family == "qwen2":
        vocab, merges = train_bpe(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
        tok = Qwen2Tokenizer(vocab=vocab, merges=merges, eos_token="<|im_end|>", pad_token="<|endoftext|>")
        tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
        tok.chat_template = CHATML_TEMPLATE
        return tok
    if family == "llama":
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

        special = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
        vocab, merges = train_bpe(special)
        raw = Tokenizer(models.BPE(vocab=vocab, merges=merges))
        raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        raw.decoder = decoders.ByteLevel()
        raw.post_processor = processors.TemplateProcessing(
            single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
            special_tokens=[("<|begin_of_text|>", vocab["<|begin_of_text|>"])])
        tok = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")
        tok.add_special_tokens({"additional_special_tokens": special[2:]})
        tok.chat_template = LLAMA3_TEMPLATE
        return tok
    raise ValueError(family)


def build_sentencepiece_tokenizer(vocab_size: int = 300):
    """A Llama-2/Mistral style tokenizer (Metaspace BPE: a lone word decodes without its leading
    space), the case incremental decoding must get right. No byte-fallback tokens: a random
    model would emit invalid byte runs, which `tokenizers` decodes differently as a whole."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaTokenizer

    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Metaspace()
    special = ["<unk>", "<s>", "</s>"]
    raw.train_from_iterator(corpus(), trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special,
                                                          show_progress=False))
    model = json.loads(raw.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return LlamaTokenizer(vocab=model["vocab"], merges=merges)


def build_config(family: str, vocab_size: int, tok):
    from transformers import GPT2Config, LlamaConfig, Qwen2Config

    common = dict(vocab_size=vocab_size, initializer_range=0.1)
    if family == "gpt2":
        return GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=128, bos_token_id=tok.bos_token_id,
                          eos_token_id=tok.eos_token_id, **common)
    if family == "qwen2":
        return Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True,
                           eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"), **common)
    return LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False,
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, **common)


def save_tiny_model(family: str, directory: Path) -> Path:
    """config.json + model.safetensors + tokenizer files, as a downloaded checkpoint has them."""
    import torch
    from transformers import AutoModelForCausalLM

    tok = build_tokenizer(family)
    config = build_config(family, len(tok), tok)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    if family == "qwen2":  # an instruct model's generation_config.json: it samples by default
        g = model.generation_config
        g.do_sample, g.temperature, g.top_p, g.top_k = True, 0.7, 0.8, 20
    model.save_pretrained(str(directory))
    tok.save_pretrained(str(directory))
    return directory


FAMILIES = ("llama", "gpt2", "qwen2")

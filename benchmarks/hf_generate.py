"""rung-hf batch generation against calling `model.generate` directly: same model, same inputs.

A random-initialised Llama-shaped model (saved to a temp dir and loaded through the `hf`
backend, as a downloaded model is) decodes a batch of prompts greedily. The baseline is a
hand-written call of `model.generate` on the same model object with the same left-padded
token ids and the same stop tokens; both produce the same tokens (checked). Timings
alternate between the two and report medians; the goal is a ratio of at most 1.05.

    .venv/bin/python benchmarks/hf_generate.py [--batch 8] [--new-tokens 64] [--repeats 10] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from smoke import parse_args

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SMOKE = {"batch": 2, "new_tokens": 4, "repeats": 1, "hidden": 64, "layers": 1, "vocab": 300}
SHAKESPEARE = Path("/work/shared/data/tinyshakespeare.txt")


def corpus_lines(limit: int = 4000) -> list[str]:
    if SHAKESPEARE.is_file():
        lines = [line for line in SHAKESPEARE.read_text(encoding="utf-8").splitlines() if line.strip()]
        return lines[:limit]
    words = "the cat sat on a mat and the dog ran to the park while birds sang songs of rain".split()
    return [" ".join(words[i % len(words):] + words[:i % len(words)]) for i in range(limit)]


def build_model(directory: Path, hidden: int, layers: int, vocab: int) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator(corpus_lines(), trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=["<|endoftext|>", "<|pad|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|endoftext|>", pad_token="<|pad|>")
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 8 // 3,
                         num_hidden_layers=layers, num_attention_heads=max(1, hidden // 64),
                         num_key_value_heads=max(1, hidden // 128), max_position_embeddings=1024,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(str(directory))
    tok.save_pretrained(str(directory))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1: steadier timings on a shared machine)")
    args = parse_args(parser, SMOKE)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    import rung
    from rung import GenerationRequest

    lines = corpus_lines()
    prompts = [" ".join(lines[i * 3:i * 3 + 1 + i % 3]) for i in range(args.batch)]  # different lengths
    with tempfile.TemporaryDirectory(prefix="rung-hf-bench-") as tmp:
        build_model(Path(tmp), args.hidden, args.layers, args.vocab)
        backend = rung.backend("hf", model=tmp, device=args.device, batch_size=max(16, args.batch))
        model, tok = backend.model, backend.hf_tokenizer
        requests = [GenerationRequest(prompt=p, temperature=0, max_tokens=args.new_tokens) for p in prompts]

        # The baseline, as a user writes it: tokenizer padding on the left, then model.generate.
        tok.padding_side = "left"
        inputs = tok(prompts, return_tensors="pt", padding=True).to(backend.device)

        def direct() -> list[list[int]]:
            out = model.generate(**inputs, max_new_tokens=args.new_tokens, do_sample=False,
                                 eos_token_id=backend.stop_ids, pad_token_id=backend.pad_id)
            return out[:, inputs["input_ids"].shape[1]:].tolist()

        def through_rung() -> list[str]:
            return [c.text for c in backend.generate_batch(requests)]

        # Same work: the same tokens come out (texts decoded from the direct ids).
        theirs = [tok.decode([t for t in row if t not in backend.stop_ids and t != backend.pad_id],
                             skip_special_tokens=True, clean_up_tokenization_spaces=False) for row in direct()]
        ours = through_rung()
        same = ours == theirs
        direct_times, rung_times = [], []
        pair = [(direct, direct_times), (through_rung, rung_times)]
        for i in range(args.repeats):
            for fn, times in (pair if i % 2 == 0 else pair[::-1]):  # ABBA: no side always goes first
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
        d, r = statistics.median(direct_times), statistics.median(rung_times)
        d_min, r_min = min(direct_times), min(rung_times)
        new_tokens = args.batch * args.new_tokens
        params = sum(p.numel() for p in model.parameters()) / 1e6
        print(f"model: Llama {params:.1f}M params (hidden {args.hidden}, {args.layers} layers), fp32, "
              f"device {backend.device}, torch threads {torch.get_num_threads()}")
        print(f"batch {args.batch} prompts x {args.new_tokens} new tokens, greedy, {args.repeats} runs each, "
              "alternating")
        print(f"same tokens from both: {same}")
        print(f"model.generate directly : {d:.3f} s  ({new_tokens / d:.0f} new tokens/s)")
        print(f"rung hf generate_batch  : {r:.3f} s  ({new_tokens / r:.0f} new tokens/s)")
        print(f"ratio rung / direct     : {r / d:.3f}x median, {r_min / d_min:.3f}x best-of-{args.repeats}  "
              "(goal <= 1.05x)")
        if not same:
            sys.exit("the two paths produced different tokens")


if __name__ == "__main__":
    main()

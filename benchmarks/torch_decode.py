"""Decoding speed of the torch backend against transformers' `LlamaForCausalLM.generate`.

Same weights (rung saves a checkpoint, transformers loads it), batch 1, greedy, a fixed
number of new tokens (no early stop), on the CPU unless --device says otherwise. Prints new
tokens/s of both, which precision each used, and the ratio (goal: >= 2x).

    .venv/bin/python benchmarks/torch_decode.py [--preset small] [--vocab 8192] [--new 128] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


class CountingTokenizer:
    """A tokenizer over `vocab` ids (ids as text) so no tokenizer file or training is needed."""

    def __init__(self, vocab: int) -> None:
        self.vocab_size = vocab
        self.special_tokens: dict[str, int] = {}
        self.eos_id = self.bos_id = self.pad_id = None

    def encode(self, text: str) -> list[int]:
        return [int(t) % self.vocab_size for t in text.split()]

    def decode(self, ids) -> str:
        return " ".join(str(i) for i in ids)

    def apply_chat_template(self, messages, add_generation_prompt=True) -> str:
        return " ".join(m.content for m in messages)

    def save(self, directory) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--new", type=int, default=128, help="new tokens per generation")
    parser.add_argument("--prompt", type=int, default=32, help="prompt tokens")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    import rung
    from rung.records import GenerationRequest

    tokenizer = CountingTokenizer(args.vocab)
    backend = rung.backend("torch", model=args.preset, tokenizer=tokenizer, device=args.device,
                           architecture={"max_seq_len": max(256, args.prompt + args.new + 8)})
    prompt_ids = torch.randint(0, args.vocab, (args.prompt,), generator=torch.Generator().manual_seed(0)).tolist()
    request = GenerationRequest(prompt=" ".join(map(str, prompt_ids)), max_tokens=args.new, temperature=0.0)

    from transformers import LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    with tempfile.TemporaryDirectory() as tmp:
        backend.save(tmp)
        hf = LlamaForCausalLM.from_pretrained(tmp, dtype=torch.float32).to(args.device).eval()
    hf.generation_config.pad_token_id = 0
    hf_input = torch.tensor([prompt_ids], device=args.device)

    def rung_once() -> tuple[float, list[int]]:
        start = time.perf_counter()
        out = backend.generate(request)
        elapsed = time.perf_counter() - start
        assert out.usage.completion_tokens == args.new, out
        return elapsed, tokenizer.encode(out.text)

    def hf_once() -> tuple[float, list[int]]:
        start = time.perf_counter()
        with torch.inference_mode():
            out = hf.generate(hf_input, attention_mask=torch.ones_like(hf_input), max_new_tokens=args.new,
                              min_new_tokens=args.new, do_sample=False)
        elapsed = time.perf_counter() - start
        return elapsed, out[0, args.prompt:].tolist()

    rung_once(), hf_once()  # warm up both
    rung_times, hf_times = [], []
    for _ in range(args.repeats):  # interleaved, so both see the same machine load
        t, rung_ids = rung_once()
        rung_times.append(t)
        t, hf_ids = hf_once()
        hf_times.append(t)
    same = rung_ids == hf_ids
    rung_tps = args.new / statistics.median(rung_times)
    hf_tps = args.new / statistics.median(hf_times)
    n_params = sum(p.numel() for p in backend.model.parameters())
    print(f"model: preset {args.preset}, vocab {args.vocab}, {n_params / 1e6:.1f}M parameters; "
          f"batch 1, prompt {args.prompt}, {args.new} new tokens, greedy, device {backend.device}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"rung torch backend : {rung_tps:8.1f} new tokens/s  (precision {backend.decode_precision}, static KV cache)")
    print(f"transformers .generate: {hf_tps:8.1f} new tokens/s  (precision fp32, default DynamicCache)")
    print(f"ratio rung / transformers: {rung_tps / hf_tps:.2f}x  (goal >= 2x); same tokens: {same}")
    sys.exit(0)


if __name__ == "__main__":
    main()

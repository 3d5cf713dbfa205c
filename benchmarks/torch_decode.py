"""Decoding speed of the torch backend against transformers' `LlamaForCausalLM.generate`.

Same weights (rung saves a checkpoint, transformers loads it), batch 1, greedy, a fixed
number of new tokens (no early stop), on the CPU unless --device says otherwise. Prints new
tokens/s of both (wall clock, and per CPU-second: steadier on a shared machine), which
precision each used, and the ratio (goal: >= 2x); also rung forced to bf16, to show why
precision "auto" decodes in fp32 on a CPU.

    .venv/bin/python benchmarks/torch_decode.py [--preset small] [--vocab 8192] [--new 128] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

from smoke import parse_args

SMOKE = {"preset": "test", "vocab": 256, "new": 4, "prompt": 4, "repeats": 1}

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
    parser.add_argument("--no-bf16", action="store_true", help="skip the bf16 run of rung")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads for both (0: torch's default). 1 by default: on a shared "
                             "2-core machine multi-threaded steps wait for descheduled workers and the timings "
                             "say more about the neighbours than the code")
    args = parse_args(parser, SMOKE)

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

    # The same weights decoded in bf16: what precision "auto" avoids for decoding on a CPU.
    bf16 = None
    if backend.device.type == "cpu" and not args.no_bf16:
        with tempfile.TemporaryDirectory() as tmp:
            backend.save(tmp)
            bf16 = rung.backend("torch", model=tmp, tokenizer=tokenizer, device=args.device, precision="bf16")

    def bf16_once() -> tuple[float, None]:
        start = time.perf_counter()
        bf16.generate(request)
        return time.perf_counter() - start, None

    runners = {"rung": rung_once, "hf": hf_once}
    if bf16 is not None:
        runners["bf16"] = bf16_once
    times: dict[str, list[float]] = {name: [] for name in runners}
    cpu: dict[str, list[float]] = {name: [] for name in runners}
    outputs: dict[str, list[int] | None] = {}
    for fn in runners.values():
        fn()  # warm up
    for _ in range(args.repeats):  # interleaved, so all see the same machine load
        for name, fn in runners.items():
            c0 = time.process_time()
            elapsed, outputs[name] = fn()
            cpu[name].append(time.process_time() - c0)
            times[name].append(elapsed)
    tps = {name: args.new / statistics.median(t) for name, t in times.items()}
    cpu_tps = {name: args.new / statistics.median(t) for name, t in cpu.items()}
    n_params = sum(p.numel() for p in backend.model.parameters())
    print(f"model: preset {args.preset}, vocab {args.vocab}, {n_params / 1e6:.1f}M parameters; "
          f"batch 1, prompt {args.prompt}, {args.new} new tokens, greedy, device {backend.device}, "
          f"torch threads {torch.get_num_threads()}, median of {args.repeats}")
    print("                          new tokens/s   per CPU-second   precision")
    print(f"rung torch backend      : {tps['rung']:10.1f}   {cpu_tps['rung']:12.1f}     "
          f"{backend.decode_precision} (precision auto; static KV cache)")
    if bf16 is not None:
        print(f"rung torch backend, bf16: {tps['bf16']:10.1f}   {cpu_tps['bf16']:12.1f}     bf16 (forced)")
    print(f"transformers .generate  : {tps['hf']:10.1f}   {cpu_tps['hf']:12.1f}     fp32 (default DynamicCache)")
    print(f"ratio rung / transformers: {tps['rung'] / tps['hf']:.2f}x wall clock, "
          f"{cpu_tps['rung'] / cpu_tps['hf']:.2f}x per CPU-second (goal >= 2x); "
          f"same tokens: {outputs['rung'] == outputs['hf']}")
    if bf16 is not None:
        print(f"rung fp32 / rung bf16 on this CPU: {tps['rung'] / tps['bf16']:.2f}x wall clock")
    sys.exit(0)


if __name__ == "__main__":
    main()

"""Perplexity speed: rung's scorer against lm-evaluation-harness's own `hf` model, same model and text.

One model folder (rung's Llama-style preset, fresh weights, saved in the transformers format
with the byte tokenizer) and one text (--docs documents of --chars characters cut from
tinyshakespeare). rung scores it with `rung_eval.scoring.scorer_for` (what `rung eval` and
`rung eval --harness` run) on the `torch` backend (rung's model), the `hf` backend (the
transformers model the harness runs too) and the `jax` backend (rung's model in JAX: XLA
fuses what eager PyTorch runs op by op; its first call compiles, timed apart and printed,
not counted in the rounds); the harness with `lm_eval.models.huggingface.HFLM`
on the folder, its `loglikelihood_rolling` (what a perplexity task such as wikitext calls).
Both use the model's whole context in disjoint windows, the same batch size and fp32. Where
bf16 is fast (a CUDA GPU, or a CPU with AMX or AVX512-BF16: `rung.hardware.cpu_has_fast_bf16`)
two more sides: `rung-torch-auto`, rung's default precision (auto: bf16 autocast there), and
`harness-hf-bf16`, the harness's model loaded in bf16 (`dtype=bfloat16`, what a harness user
asks for to go faster); their log-likelihoods are compared to the fp32 ones and the gap printed
(not checked: bf16 moves them by ~1e-3). The runs alternate for --rounds rounds in one
process (a shared machine's load changes between rounds); tokens/s are medians over rounds,
the ratio the median of per-round ratios. The fp32 log-likelihoods are checked equal (1e-4
relative) before anything is timed.

    .venv/bin/python benchmarks/eval_vs_harness.py          # ~2 minutes on a 2-core CPU
    .venv/bin/python benchmarks/eval_vs_harness.py --device cuda --preset medium

Prints tokens/s of each, and the ratios rung/harness-hf (rung-torch), rung-hf/harness-hf and
rung-jax/harness-hf, all fp32 (goal >= 1.5x); where bf16 is fast, also each tool at its default
(rung-torch-auto / harness-hf: bf16 autocast against the harness's fp32) and both in bf16
(rung-torch-auto / harness-hf-bf16).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from smoke import parse_args

SMOKE = {"preset": "test", "docs": 2, "chars": 600, "rounds": 1, "context": 64}
CORPUS = Path(os.environ.get("RUNG_BENCH_TEXT", "/work/shared/data/tinyshakespeare.txt"))
RELATIVE = 1e-4
BF16_SIDES = ("rung-torch-auto", "harness-hf-bf16")


def documents(count: int, chars: int) -> list[str]:
    if CORPUS.is_file():
        text = CORPUS.read_text(encoding="utf-8")
    else:  # any text will do: the figures are about speed
        text = " ".join(f"line {i} of a made-up play, said the player." for i in range(20000))
    step = max(chars, (len(text) - chars) // max(1, count))
    return [text[i * step:i * step + chars] for i in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="small", help="rung model preset (default small: 4.4M, context 256)")
    parser.add_argument("--context", type=int, default=256, help="the model's context, the window (tokens)")
    parser.add_argument("--docs", type=int, default=8, help="documents scored each round")
    parser.add_argument("--chars", type=int, default=6000, help="characters per document (byte tokens: as many)")
    parser.add_argument("--batch-size", type=int, default=8, help="windows per forward pass, both sides")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parse_args(parser, SMOKE)

    import torch

    import rung
    from dpo_vs_trl import write_model
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM
    from rung.hardware import cpu_has_fast_bf16
    from rung_eval.scoring import scorer_for

    texts = documents(args.docs, args.chars)
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_model(Path(tmp), args.preset, context=args.context)
        torch_backend = rung.backend("torch", model=str(folder), device=args.device, precision="fp32")
        hf_backend = rung.backend("hf", model=str(folder), device=args.device, dtype="float32", precision="fp32")
        jax_backend = rung.backend("jax", model=str(folder), precision="fp32") if args.device == "cpu" else None
        harness = HFLM(pretrained=str(folder), device=args.device, batch_size=args.batch_size, dtype="float32")
        requests = [Instance("loglikelihood_rolling", {}, (t,), i) for i, t in enumerate(texts)]
        fast_bf16 = torch.cuda.is_available() if args.device.startswith("cuda") else cpu_has_fast_bf16()
        sides = {
            "rung-torch": lambda: [ll for ll, _ in scorer_for(torch_backend, batch_size=args.batch_size)
                                   .loglikelihood_rolling(texts)],
            "rung-hf": lambda: [ll for ll, _ in scorer_for(hf_backend, batch_size=args.batch_size)
                                .loglikelihood_rolling(texts)],
            "harness-hf": lambda: harness.loglikelihood_rolling(requests, disable_tqdm=True),
        }
        if fast_bf16:
            auto_backend = rung.backend("torch", model=str(folder), device=args.device)  # precision: auto
            harness_bf16 = HFLM(pretrained=str(folder), device=args.device, batch_size=args.batch_size,
                                dtype="bfloat16")
            sides["rung-torch-auto"] = lambda: [ll for ll, _ in scorer_for(auto_backend, batch_size=args.batch_size)
                                                .loglikelihood_rolling(texts)]
            sides["harness-hf-bf16"] = lambda: harness_bf16.loglikelihood_rolling(requests, disable_tqdm=True)
        compile_s = None
        if jax_backend is not None:
            sides["rung-jax"] = lambda: [ll for ll, _ in scorer_for(jax_backend, batch_size=args.batch_size)
                                         .loglikelihood_rolling(texts)]
            started = time.perf_counter()
            sides["rung-jax"]()  # compiles its shapes once (and checks nothing: see `equal` below)
            compile_s = time.perf_counter() - started
        tokens = sum(n for _, n in scorer_for(torch_backend).loglikelihood_rolling(texts))
        reference = sides["harness-hf"]()
        equal = {}
        for name in [n for n in sides if n != "harness-hf"]:
            ours = sides[name]()
            equal[name] = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(ours, reference))
        rates: dict[str, list[float]] = {name: [] for name in sides}
        for _ in range(args.rounds):
            for name, run in sides.items():
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                started = time.perf_counter()
                run()
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                rates[name].append(tokens / (time.perf_counter() - started))

    print(f"model: {args.preset} preset, context {args.context}, byte tokenizer; {args.docs} documents, "
          f"{tokens} tokens scored a round; batch {args.batch_size}; {args.device}, fp32, "
          f"torch threads {torch.get_num_threads()}; {args.rounds} rounds")
    for name, values in rates.items():
        print(f"{name:<11}: {statistics.median(values):10.0f} tokens/s (median of {len(values)})")
    if compile_s is not None:
        print(f"rung-jax first call (compiling its shapes, not in the rounds): {compile_s:.1f} s")
    for name, worst in equal.items():
        if name in BF16_SIDES:
            print(f"{name} log-likelihoods vs harness-hf's fp32: max relative difference {worst:.1e} (bf16)")
            continue
        verdict = "equal" if worst <= RELATIVE else "DIFFERENT"
        print(f"{name} log-likelihoods vs harness-hf: {verdict} (max relative difference {worst:.1e})")

    def ratio(ours: str, theirs: str) -> float:
        return statistics.median(a / b for a, b in zip(rates[ours], rates[theirs]))

    for name in [n for n in ("rung-hf", "rung-jax", "rung-torch") if n in rates]:
        label = "rung" if name == "rung-torch" else name
        print(f"{label}/harness-hf, both fp32: tokens/s {ratio(name, 'harness-hf'):.2f}x (goal >= 1.5x)")
    if "rung-torch-auto" in rates:
        print(f"defaults, rung (auto: bf16 autocast) / harness-hf (the model's fp32): tokens/s "
              f"{ratio('rung-torch-auto', 'harness-hf'):.2f}x (goal >= 1.5x)")
        print(f"both bf16, rung (autocast) / harness-hf (dtype=bfloat16): tokens/s "
              f"{ratio('rung-torch-auto', 'harness-hf-bf16'):.2f}x")


if __name__ == "__main__":
    main()

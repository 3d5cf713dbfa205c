"""Training throughput of the jax engine against the torch engine, same preset and batch, on the CPU.

Both engines train the same architecture (a rung preset) on the same random token batches
with the same TrainingOptions, each at the precision its backend picks by default (`auto`:
both bf16 on a CPU with AMX) and at the other precisions too
with --all-precisions. Prints tokens/s of each (the mean of the log windows after the first,
which holds the first, slower steps), the ratio jax/torch, and the jit compile time of the
jax train step. A JAX decode figure (batch 1, greedy, whole loop in one jit) is printed beside it.

    .venv/bin/python benchmarks/jax_train.py [--preset small] [--vocab 8192] [--batch 8] [--seq 256]
                                             [--steps 12] [--all-precisions]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from smoke import parse_args

SMOKE = {"preset": "test", "vocab": 256, "batch": 2, "seq": 16, "steps": 4, "log_every": 2}


class RandomBatches:
    def __init__(self, vocab: int, batch: int, seq: int) -> None:
        self.vocab, self.batch, self.seq, self.pos = vocab, batch, seq, 0

    def __next__(self):
        rng = np.random.default_rng(self.pos)
        self.pos += 1
        ids = rng.integers(0, self.vocab, size=(self.batch, self.seq + 1))
        return {"input_ids": ids[:, :-1], "targets": ids[:, 1:]}

    def state_dict(self):
        return {"pos": self.pos}

    def load_state_dict(self, state):
        self.pos = state["pos"]


class Run:
    def __init__(self, output_dir: str) -> None:
        self.output_dir = Path(output_dir)
        self.config = SimpleNamespace(seed=0)
        self.logs: list[dict] = []

    def log(self, step, metrics):
        self.logs.append(dict(metrics))

    def checkpointed(self, step, path):
        pass


def options(args):
    from rung.training import TrainingOptions

    return TrainingOptions(steps=args.steps, batch_size=args.batch, log_every=args.log_every,
                           warmup_steps=2, resume="never", save_every=10**9)


def throughput(run: Run) -> float:
    windows = [m["tokens_per_s"] for m in run.logs if "tokens_per_s" in m]
    return statistics.mean(windows[1:] if len(windows) > 1 else windows)


def bench_torch(args, config, precision: str) -> float:
    import torch

    from rung_torch.engine import TorchEngine
    from rung_torch.model import Transformer
    from rung_torch.options import TorchOptions

    def objective(model, batch):
        logits = model(batch["input_ids"])
        return torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), batch["targets"].flatten()), {}

    model = Transformer(config, seed=0)
    engine = TorchEngine(model, TorchOptions(precision=precision))
    with tempfile.TemporaryDirectory() as out:
        run = Run(out)
        engine.fit(objective, RandomBatches(config.vocab_size, args.batch, args.seq), options(args), run)
    print(f"  torch {getattr(engine.precision, 'name', engine.precision):>4}: {throughput(run):9.0f} tokens/s",
          flush=True)
    return throughput(run)


def bench_jax(args, config, precision: str) -> tuple[float, float]:
    from rung_jax.engine import JaxEngine
    from rung_jax.model import init_model
    from rung_jax.objectives import next_token_loss
    from rung_jax.options import JaxOptions

    engine = JaxEngine(init_model(config, seed=0), JaxOptions(precision=precision))
    with tempfile.TemporaryDirectory() as out:
        run = Run(out)
        engine.fit(next_token_loss, RandomBatches(config.vocab_size, args.batch, args.seq), options(args), run)
    compile_s = next(m["compile_s"] for m in run.logs if "compile_s" in m)
    print(f"  jax   {engine.precision:>4}: {throughput(run):9.0f} tokens/s   "
          f"(train step compiled in {compile_s:.1f} s)", flush=True)
    return throughput(run), compile_s


def bench_decode(config, new_tokens: int = 64) -> float:
    from rung_jax.generation import Sampling, generate_ids
    from rung_jax.model import init_model

    model = init_model(config, seed=0)
    sampling = Sampling(max_tokens=new_tokens)
    prompt = list(range(1, 17))
    generate_ids(model, prompt, sampling)  # compile
    start = time.perf_counter()
    ids = generate_ids(model, prompt, sampling)
    return len(ids) / (time.perf_counter() - start)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--log-every", type=int, default=4)
    parser.add_argument("--all-precisions", action="store_true", help="also jax bf16 and torch fp32")
    args = parse_args(parser, SMOKE, argv)

    from rung.model_config import preset

    config = preset(args.preset, vocab_size=args.vocab, max_seq_len=max(args.seq, 256))
    print(f"preset {args.preset} ({config.num_params() / 1e6:.1f}M parameters, vocab {args.vocab}), "
          f"batch {args.batch} x {args.seq} tokens, {args.steps} steps", flush=True)
    torch_auto = bench_torch(args, config, "auto")
    jax_auto = bench_jax(args, config, "auto")
    jax_auto, compile_s = jax_auto
    print(f"jax / torch, each at its default precision (auto): {jax_auto / torch_auto:.2f}x   (aim >= 0.8x)")
    if args.all_precisions:
        torch_fp32 = bench_torch(args, config, "fp32")
        jax_fp32, _ = bench_jax(args, config, "fp32")
        print(f"jax fp32 / torch fp32: {jax_fp32 / torch_fp32:.2f}x;  jax auto / jax fp32: {jax_auto / jax_fp32:.2f}x")
    print(f"jax train-step compile time: {compile_s:.1f} s")
    print(f"jax decode (batch 1, greedy, 64 new tokens, fp32, whole loop in one jit): "
          f"{bench_decode(config):.0f} tokens/s")


if __name__ == "__main__":
    main(sys.argv[1:])

"""Training throughput of rung-torch's engine against plain PyTorch and transformers.

Three loops train the same Llama-style architecture (the `medium` preset, ~17M parameters
with an 8k vocabulary) on the same random tokens, batch and sequence length, and each is
timed wall-clock from one optimizer step to the next (data, step, logging: everything):

  engine   TorchEngine.fit at rung's default precision ("auto": bf16 autocast on a CPU with
           AMX/AVX512-BF16 or a bf16 GPU, fp32 otherwise)
  plain    a plain PyTorch loop over the same rung model at the same precision, written here
           (AdamW, grad clipping, zero_grad: what anyone would write)
  hf       transformers' LlamaForCausalLM of the same dims, plain fp32 loop (what a user
           gets by default)

Rounds are interleaved (engine, plain, hf, then plain, engine, hf, ...) so load hits all alike;
each figure is the median (and the best) step time over the measured steps of every round,
and tokens per CPU-second of the process, which machine load disturbs less than wall time.
MFU is model FLOPs/s against the highest bf16 (fp32 without native bf16) 1024x1024 matmul
rate measured in this run (one probe per round).

    .venv/bin/python benchmarks/torch_train.py [--preset medium] [--vocab 8192] [--seq 256]
        [--batch 8] [--steps 6] [--warmup 2] [--rounds 2] [--compile] [--threads N] [--device cpu]

Goals (issue 3): engine/plain >= 1.0x, engine/hf >= 1.8x on a CPU with AMX, MFU >= 60%.

On the 2-vCPU development machines shared with other jobs, `--threads 1` is the steadier (and
usually faster) setting: matmuls gain nothing from the second vCPU, and bf16 element-wise
kernels stall badly when one of two OpenMP threads is descheduled.
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

SMOKE = {"preset": "test", "vocab": 256, "seq": 16, "batch": 2, "steps": 2, "warmup": 1, "rounds": 1}

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


class RandomTokens:
    """Endless seeded random token batches (numpy), a BatchStream."""

    def __init__(self, batch: int, seq: int, vocab: int, seed: int = 0) -> None:
        self.batch, self.seq, self.vocab, self.seed, self.index = batch, seq, vocab, seed, 0

    def __next__(self):
        import numpy as np

        rng = np.random.default_rng([self.seed, self.index])
        self.index += 1
        return {"input_ids": rng.integers(0, self.vocab, size=(self.batch, self.seq + 1), dtype=np.int64)}

    def state_dict(self):
        return {"index": self.index}

    def load_state_dict(self, state):
        self.index = state["index"]


def next_token_loss(logits, ids):
    import torch.nn.functional as F

    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def objective(model, batch):
    from rung_torch.modeling import forward_logits

    ids = batch["input_ids"]
    return next_token_loss(forward_logits(model, ids[:, :-1]), ids), {}


class TimedRun:
    """A Run stand-in for the benchmark: records when each step was logged, writes nothing else."""

    def __init__(self, output_dir: Path) -> None:
        self.output_dir = output_dir
        self.config = type("Config", (), {"seed": 0})()
        self.times: list[float] = []

    def log(self, step, metrics) -> None:
        self.times.append((time.perf_counter(), time.process_time()))
        self.last = dict(metrics)

    def checkpointed(self, step, path) -> None:
        pass


def step_times(times: list[tuple[float, float]], warmup: int) -> list[tuple[float, float]]:
    """(wall seconds, CPU seconds of this process) of each step after the warm-up."""
    kept = times[warmup:]
    return [(b[0] - a[0], b[1] - a[1]) for a, b in zip(kept, kept[1:])]


def run_engine(config, args, tmp: Path, round_index: int) -> tuple[list[float], dict, str]:
    import torch

    from rung.training import TrainingOptions
    from rung_torch.engine import TorchEngine
    from rung_torch.model import Transformer
    from rung_torch.options import TorchOptions

    model = Transformer(config, seed=0)
    options = TorchOptions(model=args.preset, device=args.device, compile=args.compile)
    engine = TorchEngine(model, options)
    training = TrainingOptions(steps=args.warmup + args.steps + 1, batch_size=args.batch, log_every=1,
                               warmup_steps=1, resume="never", keep_checkpoints=1)
    run = TimedRun(tmp / f"engine-{round_index}")
    engine.fit(objective, RandomTokens(args.batch, args.seq, config.vocab_size), training, run)
    del model, engine
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return step_times(run.times, args.warmup), run.last, TorchEngine.__name__


def plain_loop(model, args, vocab: int, autocast_dtype, device, hf: bool) -> list[float]:
    import contextlib

    import torch

    batches = RandomTokens(args.batch, args.seq, vocab)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                                  lr=3e-4, betas=(0.9, 0.95), fused=device.type == "cuda" or None)
    model.train()
    times = []
    for _ in range(args.warmup + args.steps + 1):
        ids = torch.from_numpy(next(batches)["input_ids"]).to(device)
        ctx = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None
               else contextlib.nullcontext())
        with ctx:
            out = model(ids[:, :-1])
            logits = out.logits if hf else out
            loss = next_token_loss(logits, ids)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()  # what any loop does to print or check its loss
        times.append((time.perf_counter(), time.process_time()))
    return step_times(times, args.warmup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="medium")
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=6, help="measured steps per loop per round")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured steps first")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="torch.compile in the engine")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-hf", action="store_true", help="skip the transformers loop")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parse_args(parser, SMOKE)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from rung.model_config import preset
    from rung.hardware import cpu_has_fast_bf16
    from rung_torch.device import resolve_device, resolve_precision
    from rung_torch.engine.metrics import cpu_peak_flops, device_peak_flops
    from rung_torch.model import Transformer

    device = resolve_device(args.device)
    precision = resolve_precision("auto", device)
    autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    config = preset(args.preset, vocab_size=args.vocab, max_seq_len=max(args.seq, 256))
    flops_token = config.flops_per_token(args.seq)
    tokens = args.batch * args.seq
    print(f"device {device} ({torch.get_num_threads()} threads), rung precision '{precision}', "
          f"preset {args.preset}: {config.num_params() / 1e6:.1f}M parameters, batch {args.batch} x seq {args.seq} "
          f"= {tokens} tokens/step, {flops_token / 1e6:.1f} MFLOP/token", flush=True)

    times: dict[str, list[tuple[float, float]]] = {"engine": [], "plain": [], "hf": []}
    logged = {}

    def rate(samples, which=0, best=False):
        values = [sample[which] for sample in samples]
        return tokens / (min(values) if best else statistics.median(values))

    probes: list[float] = []  # the matmul peak, measured each round: machine load varies
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            if device.type == "cpu":
                fast = precision == "bf16" or cpu_has_fast_bf16()
                probes.append(cpu_peak_flops.__wrapped__(torch.bfloat16 if fast else torch.float32, 1024, 0.5))
            # Engine and plain loop swap places every round, so neither always runs first.
            order = ("engine", "plain") if r % 2 == 0 else ("plain", "engine")
            line = []
            for name in order:
                if name == "engine":
                    t, logged, _ = run_engine(config, args, Path(tmp), r)
                else:
                    model = Transformer(config, seed=0).to(device)
                    t = plain_loop(model, args, config.vocab_size, autocast, device, hf=False)
                    del model
                times[name] += t
                line.append(f"{name} {rate(t):8.0f} tok/s")
            print(f"round {r + 1}: " + " | ".join(line), end="", flush=True)
            if not args.no_hf:
                from transformers import LlamaConfig, LlamaForCausalLM

                hf_config = LlamaConfig(**{k: v for k, v in config.to_hf().items() if k != "architectures"})
                torch.manual_seed(0)
                hf_model = LlamaForCausalLM(hf_config).to(device)
                t = plain_loop(hf_model, args, config.vocab_size, None, device, hf=True)
                times["hf"] += t
                print(f" | hf fp32 {rate(t):8.0f} tok/s", end="", flush=True)
                del hf_model
            print(flush=True)

    peak = max([device_peak_flops(device, precision) or 0.0, *probes]) or None
    names = [name for name, t in times.items() if t]
    wall = {name: rate(times[name]) for name in names}
    best = {name: rate(times[name], best=True) for name in names}
    cpu = {name: rate(times[name], which=1) for name in names}
    print()
    print(f"training tokens/s ({args.rounds} rounds x {args.steps} steps; wall median | wall best | "
          f"per CPU-second of the process, median):")
    labels = {"engine": f"rung engine ({precision})", "plain": f"plain torch loop ({precision})",
              "hf": "transformers LlamaForCausalLM (fp32)"}
    for name in names:
        print(f"  {labels[name]:40s} {wall[name]:9.0f} | {best[name]:9.0f} | {cpu[name]:9.0f}")
    for other, goal in (("plain", 1.0), ("hf", 1.8)):
        if other in wall:
            print(f"  engine / {other:6s} {wall['engine'] / wall[other]:5.2f}x wall median, "
                  f"{best['engine'] / best[other]:5.2f}x wall best, {cpu['engine'] / cpu[other]:5.2f}x per CPU-second"
                  f"   (goal >= {goal}x)")
    if device.type == "cpu":
        print(f"matmul peak measured here: bf16 {', '.join(f'{p / 1e9:.0f}' for p in probes)} GFLOP/s "
              f"(one probe per round) and {cpu_peak_flops(torch.bfloat16) / 1e9:.0f} in the engine; "
              f"fp32 {cpu_peak_flops(torch.float32) / 1e9:.0f} GFLOP/s; MFU uses the highest")
    if peak:
        def util(table):
            return ", ".join(f"{name} {table[name] * flops_token / peak:.1%}" for name in names)

        print(f"MFU against {peak / 1e12:.3g} TFLOP/s: wall median: {util(wall)}; wall best: {util(best)}"
              "   (goal >= 60%)")
    print(f"engine's own last log: tokens_per_s {logged.get('tokens_per_s', 0):.0f}, mfu {logged.get('mfu', 0):.1%}, "
          f"peak_mem_mb {logged.get('peak_mem_mb', 0):.0f}")


if __name__ == "__main__":
    sys.exit(main())

"""GPU figures: training MFU of the `124m` preset, and batch-1 decoding of the `1b` preset against
the memory-bandwidth roofline, each against rates this run measures itself.

(a) Training: rung's TorchEngine trains the `124m` preset (vocabulary 50304) at bf16, sequence
    1024, compiled (`backend.compile`), with rung's own next-token objective, on random tokens;
    tokens/s is the median step time after a warm-up (where the compiling happens). Model FLOPs
    per token are 6N + 12·L·d·T (N: the parameters the matmuls use, a tied head once; PaLM's
    appendix B, as nanoGPT counts them: `ModelConfig.flops_per_token`). MFU is against (1) the
    datasheet dense bf16 peak of the GPU by name (H100 SXM and H200 989 TFLOP/s, A100 312:
    `rung_torch.engine.metrics.GPU_BF16_PEAK`) and (2) a large bf16 matmul measured in this run.
    Goal >= 45% on an H100/H200 (nanoGPT ~30% on an A100, llm.c ~38% on an H100).
(b) Decoding: the `1b` preset, bf16 weights, batch 1, greedy, through the torch backend's own
    `generate`; a token's time is (time of N new tokens - time of 1) / (N - 1), the prefill left
    out. The roofline is the copy bandwidth measured in this run (a large device-to-device copy,
    its reads and writes counted) over the bytes one token must read: every weight once (a tied
    embedding as the output head) and the KV cache up to its position. Goal >= 80% (gpt-fast
    ~82% on a 7B).
(c) Serving throughput is benchmarks/serve_vs_transformers.py's (scripts/gpu-check.sh runs it).

Without a GPU (or with --device cpu) the same figures at small presets and fp32 (the CPU's
precision "auto" without native bf16), against this CPU's measured matmul rate and copy
bandwidth; there is no datasheet peak for a CPU.

    python benchmarks/gpu_figures.py                   # on the GPU torch sees: ~2 minutes on an H200
    python benchmarks/gpu_figures.py --parts decode    # one part; sizes: --train-preset, --batch, --new ...
    python benchmarks/gpu_figures.py --smoke           # tiny sizes on the CPU, seconds
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from smoke import parse_args

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# The sizes of each kind of run; an option given on the command line wins.
GPU_SIZES = dict(train_preset="124m", vocab=50304, seq=1024, batch=16, steps=20, warmup=5, compile="on",
                 decode_preset="1b", new=256, prompt=16, repeats=3, matmul=8192, copy_mb=2048)
CPU_SIZES = dict(train_preset="small", vocab=8192, seq=256, batch=4, steps=4, warmup=1, compile="off",
                 decode_preset="small", new=32, prompt=16, repeats=2, matmul=1024, copy_mb=256)
SMOKE = dict(device="cpu", train_preset="test", vocab=256, seq=32, batch=2, steps=2, warmup=1, compile="off",
             decode_preset="test", new=4, prompt=4, repeats=1, matmul=128, copy_mb=4)


# ---------------------------------------------------------------------- what this machine does


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_time(fn, device, repeats: int) -> float:
    """The shortest of `repeats` timed calls of `fn`, after one untimed call (kernels chosen,
    pages faulted in)."""
    fn()
    best = math.inf
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def matmul_rate(device, dtype, size: int) -> float:
    """FLOP/s of a square `dtype` matmul of `size`, best of several runs of a few each."""
    import torch

    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, generator=generator).to(dtype)
    b = torch.randn(size, size, device=device, generator=generator).to(dtype)
    inner = 10 if device.type == "cuda" else 3

    def run():
        for _ in range(inner):
            torch.mm(a, b)

    return inner * 2.0 * size**3 / best_time(run, device, repeats=5)


def copy_bandwidth(device, megabytes: int) -> float:
    """Bytes/s of a device-to-device copy of `megabytes` MiB: what it reads plus what it writes."""
    import torch

    source = torch.ones(megabytes * 2**20, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    inner = 5

    def run():
        for _ in range(inner):
            target.copy_(source)

    return inner * 2.0 * source.numel() / best_time(run, device, repeats=5)


# ---------------------------------------------------------------------- (a) training


class RandomWindows:
    """Endless seeded random windows of `seq` tokens and their next tokens (a BatchStream)."""

    def __init__(self, batch: int, seq: int, vocab: int) -> None:
        self.batch, self.seq, self.vocab, self.index = batch, seq, vocab, 0

    def __next__(self):
        import numpy as np

        rng = np.random.default_rng([0, self.index])
        self.index += 1
        ids = rng.integers(0, self.vocab, size=(self.batch, self.seq + 1), dtype=np.int64)
        return {"input_ids": ids[:, :-1], "targets": ids[:, 1:]}

    def state_dict(self):
        return {"index": self.index}

    def load_state_dict(self, state):
        self.index = state["index"]


def train_rate(args, device, compiled: bool) -> tuple[float, str, dict]:
    """Tokens/s of the engine's training steps after the warm-up; its precision; its last log."""
    import torch

    from rung.model_config import preset
    from rung.training import TrainingOptions
    from rung_torch.engine import TorchEngine
    from rung_torch.model import Transformer
    from rung_torch.objectives import next_token_loss
    from rung_torch.options import TorchOptions
    from torch_train import TimedRun, step_times

    config = preset(args.train_preset, vocab_size=args.vocab, max_seq_len=max(args.seq, 8))
    model = Transformer(config, seed=0)
    options = TorchOptions(model=args.train_preset, device=str(device), precision=args.precision, compile=compiled)
    engine = TorchEngine(model, options)
    training = TrainingOptions(steps=args.warmup + args.steps + 1, batch_size=args.batch, log_every=1,
                               warmup_steps=1, resume="never", keep_checkpoints=1)
    with tempfile.TemporaryDirectory() as tmp:
        run = TimedRun(Path(tmp))
        engine.fit(next_token_loss, RandomWindows(args.batch, args.seq, args.vocab), training, run)
    times = [wall for wall, _ in step_times(run.times, args.warmup)]
    precision = engine.precision
    del model, engine
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return args.batch * args.seq / statistics.median(times), precision, run.last


def training_figures(args, device, peaks: dict) -> dict:
    """Tokens/s of training and its MFU against the measured matmul (and the datasheet peak)."""
    import torch

    from rung.model_config import preset

    config = preset(args.train_preset, vocab_size=args.vocab, max_seq_len=max(args.seq, 8))
    compiled = args.compile == "on"
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        rate, precision, last = train_rate(args, device, compiled)
    except Exception as exc:  # noqa: BLE001 - a compiler missing or failing: the eager figure still says much
        if not compiled:
            raise
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        print(f"training: torch.compile failed ({type(exc).__name__}: {first}); measuring eager instead", flush=True)
        compiled = False
        rate, precision, last = train_rate(args, device, compiled)
    flops = config.flops_per_token(args.seq)
    achieved = rate * flops
    memory = f", peak memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB" if device.type == "cuda" else ""
    print(f"training: preset {args.train_preset} ({config.num_params() / 1e6:.1f}M parameters, vocabulary "
          f"{args.vocab}), {precision}, {'compiled' if compiled else 'eager'}, batch {args.batch} x seq {args.seq}: "
          f"{rate:,.0f} tokens/s (median of {args.steps} steps after {args.warmup}), "
          f"{flops / 1e6:.1f} MFLOP/token = {achieved / 1e12:.3g} TFLOP/s{memory}", flush=True)
    figures = {"tokens_per_s": rate, "measured": achieved / peaks["matmul"]}
    datasheet = peaks.get("datasheet")
    if datasheet:
        figures["datasheet"] = achieved / datasheet
    against = f"{figures['datasheet']:.1%} of the datasheet bf16 peak ({datasheet / 1e12:.0f} TFLOP/s), " \
        if datasheet else "no datasheet peak for this device, "
    print(f"training MFU: {against}{figures['measured']:.1%} of the measured {peaks['matmul_dtype']} matmul "
          f"({peaks['matmul'] / 1e12:.3g} TFLOP/s)   (goal >= 45% on an H100/H200); the engine's own last log: "
          f"mfu {last.get('mfu', float('nan')):.1%}, loss {last.get('loss', float('nan')):.3f}", flush=True)
    return figures


# ---------------------------------------------------------------------- (b) decoding


def decoding_figures(args, device, bandwidth: float) -> tuple[float, float]:
    """Decode tokens/s at batch 1, and its share of the memory-bandwidth roofline."""
    import torch

    import rung
    from rung.records import GenerationRequest
    from rung_torch.device import DTYPES
    from torch_decode import CountingTokenizer

    tokenizer = CountingTokenizer(args.vocab)
    context = args.prompt + args.new + 8
    import rung_torch.backend  # noqa: F401 - imported outside the device context below

    # New weights made on the GPU itself: a 1B model's initialisation on the host takes longer
    # than everything else this part does.
    made_on = torch.device(device) if device.type == "cuda" else contextlib.nullcontext()
    with made_on:
        backend = rung.backend("torch", model=args.decode_preset, tokenizer=tokenizer, device=str(device),
                               architecture={"max_seq_len": context})
    generator = torch.Generator().manual_seed(0)
    prompt = " ".join(map(str, torch.randint(0, args.vocab, (args.prompt,), generator=generator).tolist()))

    def generate(new: int) -> float:
        synchronize(device)
        start = time.perf_counter()
        out = backend.generate(GenerationRequest(prompt=prompt, max_tokens=new, temperature=0.0))
        synchronize(device)
        assert out.usage.completion_tokens == new, out.usage
        return time.perf_counter() - start

    generate(args.new), generate(1)  # warm-up: the decode step is compiled at the first call
    many, one = [], []
    for _ in range(args.repeats):  # interleaved: both see the same machine
        many.append(generate(args.new))
        one.append(generate(1))
    per_token = (statistics.median(many) - statistics.median(one)) / (args.new - 1)
    if per_token <= 0:  # one token's noise at tiny sizes: the whole call's rate then
        per_token = statistics.median(many) / args.new
    rate = 1.0 / per_token

    model, config = backend.model, backend.model.config
    element = torch.finfo(DTYPES[backend.decode_precision]).bits // 8
    weights = sum({id(p): p.numel() for p in model.parameters()}.values()) * element  # tied: once
    kv_position = 2 * config.n_layers * config.kv_heads * config.head_dim * element
    kv = kv_position * (args.prompt + args.new / 2)  # the mean cache length a decode step reads
    roofline = bandwidth / (weights + kv)
    share = rate / roofline
    print(f"decoding: preset {args.decode_preset} ({weights / element / 1e6:.1f}M parameters, vocabulary "
          f"{args.vocab}), {backend.decode_precision} weights, batch 1, greedy, {args.new} new tokens after a "
          f"{args.prompt}-token prompt: {rate:,.1f} tokens/s ({per_token * 1e3:.3f} ms a token; "
          f"{args.new / statistics.median(many):,.1f} tokens/s with the prefill)", flush=True)
    print(f"decoding roofline: {weights / 1e9:.3f} GB of weights + {kv / 1e6:.2f} MB of KV cache a token at "
          f"{bandwidth / 1e9:,.0f} GB/s = {roofline:,.1f} tokens/s; rung reaches {share:.1%}   (goal >= 80%)",
          flush=True)
    return rate, share


# ---------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto: the GPU torch sees, else the CPU")
    parser.add_argument("--parts", default="train,decode", help="which parts: train, decode (comma-separated)")
    parser.add_argument("--precision", default="auto", help="training precision (auto: bf16 on a GPU)")
    sizes = "default: {} on a GPU, {} on a CPU"
    for name, kind in (("train_preset", str), ("vocab", int), ("seq", int), ("batch", int), ("steps", int),
                       ("warmup", int), ("decode_preset", str), ("new", int), ("prompt", int), ("repeats", int),
                       ("matmul", int), ("copy_mb", int)):
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=None,
                            help=sizes.format(GPU_SIZES[name], CPU_SIZES[name]))
    parser.add_argument("--compile", choices=("on", "off"), default=None,
                        help="torch.compile the training step (default: on on a GPU, off on a CPU)")
    args = parse_args(parser, SMOKE)
    parts = {part.strip() for part in args.parts.split(",") if part.strip()}
    if not parts or parts - {"train", "decode"}:
        parser.error(f"--parts: {args.parts!r} is not a comma-separated list of train, decode")

    import torch

    from rung_torch.device import resolve_device, resolve_precision
    from rung_torch.engine.metrics import gpu_peak_flops

    device = resolve_device(args.device)
    for name, value in (GPU_SIZES if device.type == "cuda" else CPU_SIZES).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.new < 2:
        parser.error("--new must be at least 2 (a token's time is the time of N tokens less the time of 1)")
    precision = resolve_precision(args.precision, device)
    matmul_dtype = torch.bfloat16 if precision == "bf16" else torch.float16 if precision == "fp16" else torch.float32
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{os.cpu_count()} CPUs"
    peaks = {"matmul": matmul_rate(device, matmul_dtype, args.matmul),
             "matmul_dtype": str(matmul_dtype).removeprefix("torch.")}
    if device.type == "cuda":
        peaks["datasheet"] = gpu_peak_flops(device)
    bandwidth = copy_bandwidth(device, args.copy_mb)
    datasheet = f" (datasheet {peaks['datasheet'] / 1e12:.0f})" if peaks.get("datasheet") else ""
    print(f"device {device} ({name}), torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
          f"{' (smoke: figures mean nothing)' if args.smoke else ''}", flush=True)
    print(f"measured here: {peaks['matmul_dtype']} matmul {args.matmul}^3 {peaks['matmul'] / 1e12:.3g} TFLOP/s"
          f"{datasheet}; copy of {args.copy_mb} MiB {bandwidth / 1e9:,.0f} GB/s (reads + writes)", flush=True)

    summary = []
    if "train" in parts:
        args.precision = precision
        mfu = training_figures(args, device, peaks)
        against = f"{mfu['datasheet']:.1%}" if "datasheet" in mfu else "n/a"
        summary.append(f"training {mfu['tokens_per_s']:,.0f} tokens/s, MFU {against} of the datasheet peak, "
                       f"{mfu['measured']:.1%} of the measured matmul")
    if "decode" in parts:
        rate, share = decoding_figures(args, device, bandwidth)
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the decoding model is gone with the call
        summary.append(f"decode {rate:,.1f} tokens/s, {share:.1%} of the memory-bandwidth roofline")
    print(f"gpu_figures: {'; '.join(summary)}")


if __name__ == "__main__":
    sys.exit(main())

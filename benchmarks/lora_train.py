"""LoRA training throughput: rung's `lora` trainer on the torch engine vs a plain PyTorch loop.

Both train the same peft model (rung's Llama-style `small` preset, LoRA r=16 on q/k/v/o, the
byte tokenizer), on the same batches (prompt/completion pairs cut from tinyshakespeare, ~240
tokens a row, loss on the completion), at the same precision (the engine's "auto": bf16 autocast on CPUs with
AMX, and on GPUs), with the same AdamW, clipping and schedule. Each phase runs in its own
process (so peak memory is its own); phases alternate, and the ratio reported is the median over
rounds of each round's rung/plain pair (a shared machine's load changes between rounds).

    .venv/bin/python benchmarks/lora_train.py            # ~5 minutes on a 2-core CPU
    .venv/bin/python benchmarks/lora_train.py --steps 40 --rounds 3 --preset medium --device cuda

Prints tokens/s of each, the ratio (goal: >= 1.0x), trainable parameters and peak memory
(CUDA: max allocated; CPU: the process's max resident set).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from smoke import parse_args

SMOKE = {"preset": "tiny", "steps": 4, "window": 2, "batch_size": 2, "rounds": 1}
CORPUS = Path(os.environ.get("RUNG_BENCH_TEXT", "/work/shared/data/tinyshakespeare.txt"))


def write_data(folder: Path, count: int = 512, prompt_chars: int = 160, completion_chars: int = 64) -> Path:
    if CORPUS.is_file():
        text = CORPUS.read_text(encoding="utf-8")
    else:  # any text will do: the figures are about speed, not what is learned
        text = " ".join(f"line {i} of a made-up play, said the player." for i in range(20000))
    path = folder / "pairs.jsonl"
    step = (len(text) - prompt_chars - completion_chars) // count
    with path.open("w", encoding="utf-8") as f:
        for i in range(count):
            start = i * step
            f.write(json.dumps({"prompt": text[start:start + prompt_chars],
                                "completion": text[start + prompt_chars:start + prompt_chars + completion_chars]})
                    + "\n")
    return path


def options(args) -> dict:
    return {"steps": args.steps, "batch_size": args.batch_size, "learning_rate": 1e-3, "warmup_steps": 2,
            "log_every": args.window, "r": 16, "dropout": 0.05, "eval_size": 0, "resume": "never",
            "max_length": 512}


def config(args, data: Path, out: Path) -> dict:
    return {"output_dir": str(out), "seed": 0,
            "backend": {"name": "torch", "model": args.preset, "device": args.device},
            "tokenizer": {"name": "byte"},
            "data": {"name": "chat_jsonl", "path": str(data)},
            "trainer": {"name": "lora", **options(args)},
            "logging": {"sinks": [{"name": "jsonl"}]}}


def phase_rung(args, data: Path, out: Path) -> dict:
    import rung

    rung.run(config(args, data, out))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    windows = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r][1:]  # drop the warm-up window
    first = next(r for r in rows if "trainable_params" in r)
    last = [r for r in rows if "peak_mem_mb" in r][-1]
    return {"tokens_per_s": statistics.median(windows), "trainable": first["trainable_params"],
            "total": first["total_params"], "peak_mem_mb": last["peak_mem_mb"]}


def phase_plain(args, data: Path, out: Path) -> dict:
    """The same model, batches and optimizer in a loop written out by hand."""
    import torch

    from rung.config import make_config
    from rung.runner import Run
    from rung.records import LoraSpec
    from rung_lora.data import SFTBatches, prepare_rows
    from rung_lora.options import LoraOptions
    from rung_lora.templates import make_renderer
    from rung_lora.trainer import model_context
    from rung_torch.adapters import count_parameters, wrap_lora
    from rung_torch.engine.metrics import peak_memory_mb
    from rung_torch.objectives import next_token_loss

    cfg = make_config(config(args, data, out))
    run = Run(cfg)
    backend, tokenizer = run.backend(), run.tokenizer()
    engine = backend.engine()  # only to read the device and precision the engine resolved
    device = engine.device
    precision = engine.precision if isinstance(engine.precision, str) else engine.precision.name
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    opts = LoraOptions(**options(args))
    torch.manual_seed(0)
    spec = LoraSpec(r=opts.r, alpha=opts.alpha, dropout=opts.dropout, target_modules=opts.target_modules)
    model = wrap_lora(backend.model, spec).to(device)
    model.train()
    trainable, total = count_parameters(model)
    renderer = make_renderer("auto", tokenizer)
    max_length = min(opts.max_length, model_context(backend.model) or opts.max_length)  # as the trainer does
    rows = prepare_rows(run.data().read(), renderer, tokenizer, max_length=max_length).rows
    batches = SFTBatches(rows, opts.batch_size, seed=0, pad_id=tokenizer.pad_id or 0)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=opts.learning_rate, betas=opts.betas, weight_decay=opts.weight_decay,
                                  foreach=device.type != "cuda", fused=device.type == "cuda" or None)
    windows, tokens, busy = [], 0, 0.0
    for step in range(opts.steps):
        start = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = opts.learning_rate * min(1.0, (step + 1) / opts.warmup_steps)
        batch = next(batches)
        ids = torch.from_numpy(batch["input_ids"]).to(device)
        labels = torch.from_numpy(batch["labels"]).to(device)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss, _ = next_token_loss(model, {"input_ids": ids, "labels": labels})
        loss.float().backward()
        torch.nn.utils.clip_grad_norm_(params, opts.grad_clip, foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        float(loss)  # the engine reads the loss every step too
        if device.type == "cuda":
            torch.cuda.synchronize()
        busy += time.perf_counter() - start
        tokens += ids.numel()
        if (step + 1) % opts.log_every == 0:
            windows.append(tokens / busy)
            tokens, busy = 0, 0.0
    return {"tokens_per_s": statistics.median(windows[1:]), "trainable": float(trainable), "total": float(total),
            "peak_mem_mb": peak_memory_mb(device)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--window", type=int, default=5, help="steps per throughput window")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--phase", choices=["rung", "plain"], help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parse_args(parser, SMOKE)
    if args.phase:
        fn = phase_rung if args.phase == "rung" else phase_plain
        print("RESULT " + json.dumps(fn(args, Path(args.data), Path(args.out))), flush=True)
        return
    with tempfile.TemporaryDirectory() as tmp:
        data = write_data(Path(tmp))
        results: dict[str, list[dict]] = {"plain": [], "rung": []}
        for round_ in range(args.rounds):
            for phase in ("plain", "rung"):
                cmd = [sys.executable, __file__, "--phase", phase, "--data", str(data),
                       "--out", f"{tmp}/{phase}{round_}", "--preset", args.preset, "--steps", str(args.steps),
                       "--window", str(args.window), "--batch-size", str(args.batch_size), "--device", args.device]
                done = subprocess.run(cmd, capture_output=True, text=True)
                line = next((out for out in done.stdout.splitlines() if out.startswith("RESULT ")), None)
                if line is None:
                    sys.exit(f"{phase} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
                results[phase].append(json.loads(line[7:]))
                print(f"round {round_ + 1} {phase:5s}: {results[phase][-1]['tokens_per_s']:,.0f} tokens/s", flush=True)
    plain = statistics.median(r["tokens_per_s"] for r in results["plain"])
    ours = statistics.median(r["tokens_per_s"] for r in results["rung"])
    # Each round's pair ran back to back, under the same load: the ratio of pairs is steadier.
    pairs = [r["tokens_per_s"] / p["tokens_per_s"] for p, r in zip(results["plain"], results["rung"])]
    info = results["rung"][0]
    print(f"\nLoRA r=16 q/k/v/o on preset '{args.preset}', batch {args.batch_size}, {args.steps} steps, byte tokenizer")
    share = info["trainable"] / info["total"]
    print(f"trainable parameters: {info['trainable']:,.0f} of {info['total']:,.0f} ({share:.2%})")
    peak = {phase: max(r["peak_mem_mb"] for r in rows) for phase, rows in results.items()}
    print(f"plain peft loop : {plain:,.0f} tokens/s, peak memory {peak['plain']:,.0f} MB")
    print(f"rung lora       : {ours:,.0f} tokens/s, peak memory {peak['rung']:,.0f} MB")
    print(f"ratio rung/plain: {statistics.median(pairs):.2f}x, median of rounds "
          f"({', '.join(f'{x:.2f}' for x in pairs)}) (goal >= 1.0x)")


if __name__ == "__main__":
    main()

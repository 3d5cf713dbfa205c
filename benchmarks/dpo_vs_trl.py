"""DPO training speed: rung's `dpo` trainer against TRL's `DPOTrainer`, same model, data and batch.

Both train one model folder (rung's Llama-style preset saved in the transformers format, the
byte tokenizer) on the same preference pairs (prompt : answer = 4 : 1 in characters, cut from
tinyshakespeare), batch, beta, learning rate and precision (fp32 unless --precision bf16).
rung runs its own model (`torch` backend) and the transformers model (`hf` backend, the very
module TRL trains); TRL runs as configured by default (a reference copy of the model in memory,
every prompt through the model twice). Each phase runs in its own process, so its peak
memory is its own; phases alternate for --rounds rounds and the ratios are medians of
per-round pairs (a shared machine's load changes between rounds).

    .venv/bin/python benchmarks/dpo_vs_trl.py              # ~6 minutes on a 2-core CPU
    .venv/bin/python benchmarks/dpo_vs_trl.py --preset small --batch-size 8 --device cuda

Prints optimizer steps/s (timed between step ends after --warmup steps), whole-call seconds
(model, data and trainer set up, then trained: rung.run, with its one pass for the reference
log-probabilities; TRL: from_pretrained, DPOTrainer(...), train()), whole-process seconds
(interpreter start to exit, every import included: TRL's imports come before its whole-call
clock starts, rung imports its plugins inside rung.run, so only this one counts the same work)
and peak memory (the process's max resident set; CUDA: max allocated), and the ratios
rung/TRL (goal: steps/s >= 1.5x, peak memory no higher).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from smoke import parse_args

SMOKE = {"preset": "test", "steps": 4, "warmup": 1, "batch_size": 2, "rounds": 1, "pairs": 16}
CORPUS = Path(os.environ.get("RUNG_BENCH_TEXT", "/work/shared/data/tinyshakespeare.txt"))
PROMPT_CHARS, ANSWER_CHARS = 160, 40


def write_data(folder: Path, count: int) -> Path:
    """Pairs cut from the corpus: a prompt, the text that follows (chosen), text from elsewhere."""
    if CORPUS.is_file():
        text = CORPUS.read_text(encoding="utf-8")
    else:  # any text will do: the figures are about speed, not what is learned
        text = " ".join(f"line {i} of a made-up play, said the player." for i in range(20000))
    path = folder / "pairs.jsonl"
    step = (len(text) - PROMPT_CHARS - 3 * ANSWER_CHARS) // count
    with path.open("w", encoding="utf-8") as f:
        for i in range(count):
            at = i * step
            prompt = text[at:at + PROMPT_CHARS]
            chosen = text[at + PROMPT_CHARS:at + PROMPT_CHARS + ANSWER_CHARS]
            rejected = text[at + PROMPT_CHARS + 2 * ANSWER_CHARS:at + PROMPT_CHARS + 3 * ANSWER_CHARS]
            f.write(json.dumps({"prompt": prompt, "chosen": chosen, "rejected": rejected}) + "\n")
    return path


def write_model(folder: Path, preset: str, context: int = 512) -> Path:
    """rung's preset with fresh weights and a context of `context` tokens, saved as a
    transformers Llama folder with the byte tokenizer (the DPO, GRPO and serving benchmarks'
    model: rung and its baseline load the same folder)."""
    import rung

    target = folder / "model"
    tokenizer = rung.tokenizer("byte")
    backend = rung.backend("torch", model=preset, device="cpu", precision="fp32", tokenizer=tokenizer,
                           architecture={"max_seq_len": context})
    backend.save(target)
    tokenizer.save(target)
    return target


def peak_mb(device: str) -> float:
    if device == "cuda":
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def steps_per_s(ends: list[float], warmup: int) -> float:
    timed = ends[warmup:]
    return (len(timed) - 1) / (timed[-1] - timed[0]) if len(timed) > 1 else float("nan")


def run_phase(cmd: list[str], env: dict | None = None) -> dict:
    """Run one phase's process; its RESULT line, with `process_s`: the process's wall time,
    interpreter start to exit."""
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    process_s = time.perf_counter() - started
    line = next((out for out in done.stdout.splitlines() if out.startswith("RESULT ")), None)
    if line is None:
        sys.exit(f"{cmd[cmd.index('--phase') + 1]} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return {**json.loads(line[7:]), "process_s": process_s}


def phase_rung(args, data: Path, model: Path, out: Path, backend: str) -> dict:
    import rung
    from rung.hookspecs import hookimpl
    from rung.plugins import get_plugins

    ends: list[float] = []

    class StepClock:
        @hookimpl
        def rung_on_step(self, run, step, metrics):
            if "loss" in metrics:
                ends.append(time.perf_counter())

    get_plugins().manager.register(StepClock(), name="step-clock")
    config = {
        "output_dir": str(out), "seed": 0,
        "backend": {"name": backend, "model": str(model), "device": args.device, "precision": args.precision},
        "data": {"name": "preference_jsonl", "path": str(data)},
        "trainer": {"name": "dpo", "steps": args.steps, "batch_size": args.batch_size, "learning_rate": 1e-5,
                    "beta": 0.1, "log_every": 1, "eval_size": 0, "resume": "never", "chat_template": "plain",
                    "max_length": args.max_length, "max_prompt_length": PROMPT_CHARS + 32,
                    "max_completion_length": ANSWER_CHARS + 8, "warmup_steps": 0, "shuffle": False},
    }
    if backend == "torch":
        config["tokenizer"] = {"name": "byte"}
    started = time.perf_counter()
    rung.run(config)
    total = time.perf_counter() - started
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    tokens = max(r.get("tokens", 0) for r in rows)
    return {"steps_per_s": steps_per_s(ends, args.warmup), "total_s": total, "peak_mb": peak_mb(args.device),
            "tokens_per_step": tokens / args.steps}


def phase_trl(args, data: Path, model: Path, out: Path) -> dict:
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    ends: list[float] = []
    tokens = [0]

    class StepClock(TrainerCallback):
        def on_step_end(self, *a, **k):
            ends.append(time.perf_counter())

    torch.manual_seed(0)
    started = time.perf_counter()  # as rung.run's: model, data and trainer set up, then trained
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    policy = AutoModelForCausalLM.from_pretrained(str(model), dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(model))
    dataset = load_dataset("json", data_files=str(data), split="train")
    config = DPOConfig(output_dir=str(out), max_steps=args.steps, per_device_train_batch_size=args.batch_size,
                       learning_rate=1e-5, beta=0.1, logging_steps=10**6, save_strategy="no", report_to="none",
                       lr_scheduler_type="constant", warmup_steps=0, max_length=PROMPT_CHARS + ANSWER_CHARS + 16,
                       use_cpu=args.device == "cpu", bf16=dtype == torch.bfloat16, dataloader_num_workers=0,
                       disable_tqdm=True, seed=0, max_grad_norm=1.0, weight_decay=0.0)
    trainer = DPOTrainer(model=policy, args=config, train_dataset=dataset, processing_class=tokenizer,
                         callbacks=[StepClock()])
    collate = trainer.data_collator

    def counting(features):
        batch = collate(features)
        ids = [v for k, v in batch.items() if k.endswith("input_ids") and hasattr(v, "numel")]
        tokens[0] += sum(int(v.numel()) for v in ids)
        return batch

    trainer.data_collator = counting
    trainer.train()
    total = time.perf_counter() - started
    return {"steps_per_s": steps_per_s(ends, args.warmup), "total_s": total, "peak_mb": peak_mb(args.device),
            "tokens_per_step": tokens[0] / max(len(ends), 1)}


PHASES = ("trl", "rung-torch", "rung-hf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2, help="steps left out of the timing")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--pairs", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parse_args(parser, SMOKE)
    args.max_length = PROMPT_CHARS + 2 * ANSWER_CHARS + 40  # prompt, both answers, the template's words
    if args.phase:
        folder = Path(args.dir)
        if args.phase == "trl":
            result = phase_trl(args, folder / "pairs.jsonl", folder / "model", Path(args.out))
        else:
            result = phase_rung(args, folder / "pairs.jsonl", folder / "model", Path(args.out), args.phase[5:])
        print("RESULT " + json.dumps(result), flush=True)
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_data(folder, args.pairs)
        write_model(folder, args.preset)
        results: dict[str, list[dict]] = {phase: [] for phase in PHASES}
        for round_ in range(args.rounds):
            for phase in PHASES:
                cmd = [sys.executable, __file__, "--phase", phase, "--dir", tmp, "--out", f"{tmp}/{phase}{round_}",
                       "--preset", args.preset, "--steps", str(args.steps), "--warmup", str(args.warmup),
                       "--batch-size", str(args.batch_size), "--pairs", str(args.pairs), "--device", args.device,
                       "--precision", args.precision]
                results[phase].append(run_phase(cmd))
                r = results[phase][-1]
                print(f"round {round_ + 1} {phase:10s}: {r['steps_per_s']:.3f} steps/s, {r['total_s']:.1f} s in all "
                      f"({r['process_s']:.1f} s whole process), "
                      f"peak {r['peak_mb']:,.0f} MB, {r['tokens_per_step']:,.0f} tokens/step", flush=True)
    print(f"\nDPO on preset '{args.preset}', batch {args.batch_size} pairs, {args.steps} steps, {args.precision}, "
          f"{args.device}; prompt {PROMPT_CHARS} / answers {ANSWER_CHARS} bytes")
    print_ratios(results, "goal >= 1.5x", memory_goal=" (goal <= 1.0x)")


def print_ratios(results: dict[str, list[dict]], speed_goal: str, memory_goal: str = "") -> None:
    """Each rung phase against TRL: medians of the per-round ratios (steps/s; per CPU second
    where the phases timed it; whole call and whole process, TRL's time over rung's; peak memory)."""
    trl = results["trl"]

    def median(ours: list[dict], ratio) -> float:
        return statistics.median(ratio(o, t) for o, t in zip(ours, trl))

    for phase, ours in results.items():
        if phase == "trl":
            continue
        cpu = ""
        if "steps_per_cpu_s" in ours[0]:
            cpu = f", per CPU second {median(ours, lambda o, t: o['steps_per_cpu_s'] / t['steps_per_cpu_s']):.2f}x"
        print(f"{phase:10s}/trl: steps/s {median(ours, lambda o, t: o['steps_per_s'] / t['steps_per_s']):.2f}x "
              f"({speed_goal}){cpu}, whole call {median(ours, lambda o, t: t['total_s'] / o['total_s']):.2f}x "
              f"faster, whole process {median(ours, lambda o, t: t['process_s'] / o['process_s']):.2f}x faster, "
              f"peak memory {median(ours, lambda o, t: o['peak_mb'] / t['peak_mb']):.2f}x{memory_goal}")


if __name__ == "__main__":
    main()

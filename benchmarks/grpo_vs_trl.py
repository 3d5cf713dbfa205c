"""GRPO training speed: rung's `grpo` trainer against TRL's `GRPOTrainer`, same model, prompts and sizes.

Both train one model folder (rung's Llama-style preset saved in the transformers format, the
byte tokenizer) on the same arithmetic prompts (`rung_rlhf.synthetic`, rendered with the plain
template: TRL gets the rendered text, so both sample after the same prompt ids), with the same
G completions per prompt, completion length, prompts per step, temperature 1 (no top-k/top-p),
reward (`rung_rlhf.rewards.NumericMatch`, the `numeric_match` reward rung runs, called by TRL
through a wrapper), beta 0 (no reference model), one optimizer step per sampled batch, token
normalisation (TRL's default "dapo"), a constant learning rate, gradient clipping, no
activation checkpointing (TRL's GRPOConfig turns it on by default: a second forward pass in
every backward that rung does not do) and one precision, --precision: fp32 (default) or bf16
(rung's "bf16", TRL's bf16=True: autocast training). --precision defaults compares what each
runs when told nothing: rung's "auto" (bf16 autocast training where the CPU has native bf16,
fp32 sampling on a CPU) against TRL's own GRPOConfig defaults (bf16=True and activation
checkpointing on).
Both stop a completion at the eos id; a fresh model seldom samples it, so nearly every
completion runs its full length (the tokens generated per step are printed). TRL generates
with transformers' `generate`; rung-torch samples with rung's own model and decoder, rung-hf
the transformers model (the very module TRL trains) through rung's `sample_tokens`: a Llama is
rung's network, so rung's decoder runs on its parameters (`rung_torch.transformers_view`).

Each phase runs in its own process, so its peak memory is its own; phases alternate for
--rounds rounds and the ratios are medians of per-round pairs (a shared machine's load
changes between rounds).

    .venv/bin/python benchmarks/grpo_vs_trl.py              # ~6 minutes on a 2-core CPU
    .venv/bin/python benchmarks/grpo_vs_trl.py --preset small --prompts-per-step 8 --device cuda

Every phase runs with --threads CPU threads (default 1: on a machine shared with other work,
OpenMP threads beyond the free cores wait for each other many times over; give the cores
the run owns). Prints optimizer steps/s (timed between step ends after --warmup steps; a
step is sampling B x G completions, rewarding them and one update; also per second of the
process's CPU time, which other work on the machine hardly moves), whole-call seconds
(model, data and trainer set up, then trained), whole-process seconds (interpreter start to
exit: TRL's imports come before its whole-call clock starts, rung imports its plugins inside
rung.run, so only this one counts the same work),
peak memory (the process's max resident set; CUDA: max allocated), tokens generated per
step, and the ratios rung/TRL (goal: steps/s >= 2x).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from dpo_vs_trl import peak_mb, print_ratios, run_phase, steps_per_s, write_model
from smoke import parse_args

SMOKE = {"preset": "test", "steps": 3, "warmup": 1, "prompts_per_step": 2, "generations": 2,
         "completion_length": 4, "rounds": 1, "prompts": 16}
LEARNING_RATE = 1e-5


def write_prompts(folder: Path, count: int) -> None:
    """prompts.jsonl for rung ({"prompt", "reference"}) and trl_prompts.jsonl: the same
    prompts rendered with the plain template, as the text TRL tokenizes."""
    import rung
    from rung.records import Message
    from rung_lora.templates import make_renderer
    from rung_rlhf.synthetic import write

    paths = write(folder, train=count, eval=1, seed=0)
    render = make_renderer("plain", rung.tokenizer("byte"))
    with (folder / "trl_prompts.jsonl").open("w", encoding="utf-8") as out:
        for line in paths["prompts"].read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            text = render([Message("user", record["prompt"])], add_generation_prompt=True)
            out.write(json.dumps({"prompt": text, "reference": record["reference"]}) + "\n")


def longest_prompt(folder: Path) -> int:
    """The longest rendered prompt in tokens (the byte tokenizer: one a byte)."""
    lines = (folder / "trl_prompts.jsonl").read_text(encoding="utf-8").splitlines()
    return max(len(json.loads(line)["prompt"].encode("utf-8")) for line in lines)


def phase_rung(args, folder: Path, out: Path, backend: str) -> dict:
    import rung
    from rung.hookspecs import hookimpl
    from rung.plugins import get_plugins

    ends: list[float] = []
    cpu_ends: list[float] = []

    class StepClock:
        @hookimpl
        def rung_on_step(self, run, step, metrics):
            if "loss" in metrics:
                ends.append(time.perf_counter())
                cpu_ends.append(time.process_time())

    get_plugins().manager.register(StepClock(), name="step-clock")
    group, length = args.generations, args.completion_length
    prompt = longest_prompt(folder)
    per_row = args.completions_per_row or group  # rung's rows: the longest prompt and this many completions
    config = {
        "output_dir": str(out), "seed": 0,
        "backend": {"name": backend, "model": str(folder / "model"), "device": args.device,
                    "precision": "auto" if args.precision == "defaults" else args.precision},
        "data": {"name": "prompts_jsonl", "path": str(folder / "prompts.jsonl")},
        "trainer": {"name": "grpo", "steps": args.steps, "batch_size": args.prompts_per_step,
                    "num_generations": group, "max_completion_length": length, "temperature": 1.0,
                    "rewards": [{"name": "numeric_match"}], "beta": 0.0, "num_iterations": 1,
                    "learning_rate": LEARNING_RATE, "min_lr_ratio": 1.0, "warmup_steps": 0, "weight_decay": 0.0,
                    "grad_clip": 1.0,
                    "log_every": 1, "eval_size": 0, "eval_on_start": False, "resume": "never",
                    "chat_template": "plain", "max_prompt_length": prompt, "max_length": prompt + per_row * length,
                    "shuffle": False, "skip_equal_reward_groups": not args.no_skip},
    }
    if backend == "torch":
        config["tokenizer"] = {"name": "byte"}
    started = time.perf_counter()
    rung.run(config)
    total = time.perf_counter() - started
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    lengths = [r["completion_length"] for r in rows if "completion_length" in r]
    completions = args.prompts_per_step * group
    return {"steps_per_s": steps_per_s(ends, args.warmup), "steps_per_cpu_s": steps_per_s(cpu_ends, args.warmup),
            "total_s": total, "peak_mb": peak_mb(args.device),
            "tokens_per_step": statistics.mean(lengths) * completions if lengths else float("nan"),
            "rows_trained": statistics.mean([r["rows_trained"] for r in rows if "rows_trained" in r] or [1.0])}


def phase_trl(args, folder: Path, out: Path) -> dict:
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rung_rlhf.rewards import NumericMatch

    ends: list[float] = []
    cpu_ends: list[float] = []
    generated: list[int] = []
    numeric_match = NumericMatch()

    def numeric_match_reward(prompts, completions, completion_ids, reference, **_):
        generated.append(sum(len(ids) for ids in completion_ids))
        return [numeric_match(c, r) for c, r in zip(completions, reference)]

    class StepClock(TrainerCallback):
        def on_step_end(self, *a, **k):
            ends.append(time.perf_counter())
            cpu_ends.append(time.process_time())

    torch.manual_seed(0)
    started = time.perf_counter()  # as rung.run's: model, data and trainer set up, then trained
    policy = AutoModelForCausalLM.from_pretrained(str(folder / "model"), dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(folder / "model"))
    dataset = load_dataset("json", data_files=str(folder / "trl_prompts.jsonl"), split="train")
    completions = args.prompts_per_step * args.generations
    # Unless --precision defaults: TRL's precision set as rung's, and no activation checkpointing
    # (GRPOConfig's default is on; rung's is off).
    precision = {} if args.precision == "defaults" else {"bf16": args.precision == "bf16",
                                                         "gradient_checkpointing": False}
    config = GRPOConfig(output_dir=str(out), max_steps=args.steps, per_device_train_batch_size=completions,
                        num_generations=args.generations, max_completion_length=args.completion_length,
                        temperature=1.0, top_k=0, top_p=1.0, beta=0.0, num_iterations=1, loss_type="dapo",
                        scale_rewards="group", learning_rate=LEARNING_RATE, lr_scheduler_type="constant",
                        warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, logging_steps=10**6,
                        save_strategy="no", report_to="none", use_cpu=args.device == "cpu", **precision,
                        dataloader_num_workers=0, disable_tqdm=True, seed=0, shuffle_dataset=False)
    trainer = GRPOTrainer(model=policy, reward_funcs=[numeric_match_reward], args=config, train_dataset=dataset,
                          processing_class=tokenizer, callbacks=[StepClock()])
    trainer.train()
    total = time.perf_counter() - started
    return {"steps_per_s": steps_per_s(ends, args.warmup), "steps_per_cpu_s": steps_per_s(cpu_ends, args.warmup),
            "total_s": total, "peak_mb": peak_mb(args.device),
            "tokens_per_step": statistics.mean(generated) if generated else float("nan")}


PHASES = ("trl", "rung-torch", "rung-hf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2, help="steps left out of the timing")
    parser.add_argument("--prompts-per-step", type=int, default=4, help="B: prompts sampled per optimizer step")
    parser.add_argument("--generations", type=int, default=8, help="G: completions per prompt")
    parser.add_argument("--completion-length", type=int, default=32, help="new tokens per completion (at most)")
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--completions-per-row", type=int, default=None,
                        help="rung's max_length fits the longest prompt and this many completions (default: all "
                        "G, one row per prompt); fewer: a group spreads over several shorter rows")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "defaults"],
                        help="both sides fp32 or bf16 autocast; defaults: rung's auto against TRL's own defaults")
    parser.add_argument("--no-skip", action="store_true",
                        help="rung trains every row, as TRL does (skip_equal_reward_groups: false; by default "
                             "rows whose rewards are all equal, with exactly zero gradient, are left out)")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads of every phase (OMP_NUM_THREADS); more than the cores this run owns "
                        "slows a busy machine's OpenMP many times over")
    parser.add_argument("--phases", default=",".join(PHASES), help="which phases to run (comma-separated)")
    parser.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parse_args(parser, SMOKE)
    if args.phase:
        folder = Path(args.dir)
        if args.phase == "trl":
            result = phase_trl(args, folder, Path(args.out))
        else:
            result = phase_rung(args, folder, Path(args.out), args.phase[5:])
        print("RESULT " + json.dumps(result), flush=True)
        return
    phases = [p for p in args.phases.split(",") if p]
    if "trl" not in phases or set(phases) - set(PHASES):
        sys.exit(f"--phases: 'trl' and any of {', '.join(PHASES[1:])}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_prompts(folder, args.prompts)
        write_model(folder, args.preset, max(512, longest_prompt(folder) + args.generations * args.completion_length))
        results: dict[str, list[dict]] = {phase: [] for phase in phases}
        for round_ in range(args.rounds):
            for phase in phases:
                cmd = [sys.executable, __file__, "--phase", phase, "--dir", tmp, "--out", f"{tmp}/{phase}{round_}",
                       "--preset", args.preset, "--steps", str(args.steps), "--warmup", str(args.warmup),
                       "--prompts-per-step", str(args.prompts_per_step), "--generations", str(args.generations),
                       "--completion-length", str(args.completion_length), "--prompts", str(args.prompts),
                       "--device", args.device, "--precision", args.precision]
                if args.completions_per_row:
                    cmd += ["--completions-per-row", str(args.completions_per_row)]
                if args.no_skip:
                    cmd.append("--no-skip")
                results[phase].append(run_phase(cmd, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)}))
                r = results[phase][-1]
                print(f"round {round_ + 1} {phase:10s}: {r['steps_per_s']:.3f} steps/s "
                      f"({r['steps_per_cpu_s']:.3f} per CPU s), {r['total_s']:.1f} s in all "
                      f"({r['process_s']:.1f} s whole process), "
                      f"peak {r['peak_mb']:,.0f} MB, {r['tokens_per_step']:,.0f} tokens generated/step"
                      + (f", {r['rows_trained']:.0%} of rows trained" if "rows_trained" in r else ""), flush=True)
    print(f"\nGRPO on preset '{args.preset}', {args.prompts_per_step} prompts x {args.generations} completions of "
          f"up to {args.completion_length} tokens per step, {args.steps} steps, {args.precision}, {args.device}"
          + (f", {args.threads} CPU thread(s)" if args.device == "cpu" else "")
          + f"; rung: {args.completions_per_row or args.generations} completions per row")
    print_ratios(results, "goal >= 2x")

if __name__ == "__main__":
    main()

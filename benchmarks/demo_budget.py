"""The Level 3 demo's recipe against candidate recipes, each trained for the same CPU time.

Every recipe is `examples/pretrain_stdlib.yaml` (the demo: the standard library's source,
its BPE tokenizer, the `tiny` model) plus config overrides. Each is trained in its own process
(one intra-op thread) for a fixed budget of **process CPU time**, not wall time, so a shared,
busy machine slows every recipe without favouring one:

1. probe: the recipe trains `--probe-steps` steps; the CPU seconds of its second half give
   the recipe's CPU cost per step (the first half holds start-up and warm-up);
2. run: the recipe trains `floor(budget / cost per step)` steps with its own schedule (warm-up,
   cosine decay to the end), so a slower step (Muon's Newton-Schulz, a wider model) buys
   fewer steps; the CPU time it really took is printed beside the budget;
3. held-out bits per byte: the trainer's `val_bpb` on `--val-batches` fixed windows of the
   validation split (files never trained on), nats/token beside it;
4. parse rate: `--samples` continuations (`--max-tokens` new tokens each, the recipe's sampling
   temperature and top-k unless given, and its backend's min_p, repetition_penalty and
   token_healing) of each `def name(...):` prompt in PROMPTS, drawn from
   the saved model through its backend, and the share that `ast.parse` accepts after the cut:

   The cut (where the sampled function ends): the text is prompt + completion. Its first line
   is the `def` line; the function goes on through the following lines while each is indented
   (starts with a space or a tab) and not blank. It ends before the first blank (or
   whitespace-only) line or the first line that starts in column 0. If the sample runs out of
   tokens before such a line, its last line (maybe cut mid-token) is dropped. What is left is
   given to `ast.parse`; a `def` line with no body left fails, as it does in Python.

`--current-steps N` sets the budget to the CPU time N steps of the current recipe take (700:
the demo's own budget, whatever the machine's speed or load); every other recipe's steps come
from its own probed cost against the current one's.

Usage (nice: the machine is shared; CPU-time budgets keep the comparison fair anyway):

    nice -n 10 .venv/bin/python benchmarks/demo_budget.py --cpu-minutes 3 \\
        --candidate "muon: trainer.optimizer=muon" \\
        --candidate "qk: backend.architecture.qk_norm=true" \\
        --candidate overlay.yaml            # a YAML overlay, merged over the demo's config

`--current` adds overrides to the current recipe itself. The data is prepared once under
`--work` (default runs/demo_budget) and reused. `--smoke` makes a tiny corpus on the fly and
trains a few steps of the `test` preset: seconds, the same code paths, figures meaningless.
Prints one line per recipe and, per candidate, `candidate <name> / current: bits per byte
0.950x (...)`.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from smoke import parse_args

from rung import hookimpl

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [
    "def fibonacci(n):",
    "def read_lines(path):",
    "def parse_header(line):",
    "def __init__(self, name, value):",
    "def merge(left, right):",
    "def is_valid(self, key):",
    "def format_time(seconds):",
    "def get_config(section, default=None):",
]
SAMPLING_OPTIONS = ("min_p", "repetition_penalty", "token_healing")
SMOKE = {"cpu_minutes": 0.02, "probe_steps": 4, "samples": 1, "max_tokens": 16, "val_batches": 2, "prompts": 2}


# ---------------------------------------------------------------------- the parse rule


def function_text(prompt: str, completion: str, finished: bool = False) -> str:
    """prompt + completion cut where the sampled function ends (the rule in the module docstring).

    `finished`: the completion stopped by itself (an end-of-text token), so its last line is whole.
    """
    lines = (prompt + completion).split("\n")
    kept = [lines[0]]
    for line in lines[1:]:
        if not line.strip() or not line[:1].isspace():
            return "\n".join(kept) + "\n"
        kept.append(line)
    if not finished:
        kept = kept[:-1]  # ran out of tokens inside the function: the last line may be cut short
    return "\n".join(kept) + "\n"


def parses(text: str) -> bool:
    try:
        ast.parse(text)
    except (SyntaxError, ValueError):  # ValueError: a NUL byte
        return False
    return True


# ---------------------------------------------------------------------- one recipe (a child process)


class CpuClock:
    """Plugin hooks that note the process's CPU time when the model is built and at each logged step."""

    def __init__(self) -> None:
        self.loaded: float | None = None
        self.steps: dict[int, float] = {}

    @hookimpl
    def rung_after_model_load(self, run: Any, backend: Any) -> None:
        self.loaded = time.process_time()

    @hookimpl
    def rung_on_step(self, run: Any, step: int, metrics: dict[str, float]) -> None:
        self.steps[step] = time.process_time()


def recipe_data(spec: dict[str, Any]) -> dict[str, Any]:
    """The recipe's config: the base config, the overlay merged over it."""
    return merge(json.loads(json.dumps(spec["base"])), spec.get("overlay") or {})


def merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value
    return base


def train(spec: dict[str, Any], out: Path, steps: int, log_every: int, val_batches: int) -> tuple[Any, CpuClock]:
    """One training run of the recipe, `steps` steps, no checkpoints or samples on the way."""
    from rung.config import make_config
    from rung.plugins import load_plugins
    from rung.runner import run_config

    import shutil

    clock = CpuClock()
    shutil.rmtree(out, ignore_errors=True)  # a fresh run: nothing of an earlier one (metrics, checkpoints) left
    overrides = list(spec.get("overrides") or []) + [
        f"output_dir={out}", f"trainer.steps={steps}", f"trainer.log_every={log_every}", "trainer.eval_every=null",
        "trainer.sample_every=null", "trainer.save_every=null", "trainer.print_samples=false",
        "trainer.plot=false", "trainer.resume=never", f"trainer.val_batches={val_batches}",
        "trainer.keep_checkpoints=1",
    ]
    data = recipe_data(spec)
    data["trainer"]["warmup_steps"] = min(int(data["trainer"].get("warmup_steps", 0)), max(steps // 4, 0))
    config = make_config(data, overrides, source=spec["name"])
    plugins = load_plugins(extra=[("demo-budget-clock", clock)])
    return run_config(config, plugins), clock


def run_recipe(spec: dict[str, Any]) -> dict[str, Any]:
    """Probe, train for the budget, measure: what the parent prints (as JSON)."""
    work = Path(spec["work"])
    probe = int(spec["probe_steps"])
    half = max(probe // 2, 1)
    _, clock = train(spec, work / f"probe-{spec['name']}", probe, half, val_batches=0)
    per_step = (clock.steps[probe] - clock.steps[half]) / max(probe - half, 1)
    budget = float(spec["cpu_minutes"]) * 60
    if spec.get("current_steps"):  # the budget: that many steps of the current recipe, at its probed cost
        budget = int(spec["current_steps"]) * float(spec.get("current_cost") or per_step)
    steps = max(int(budget / per_step), 2)
    out = work / f"run-{spec['name']}"
    started = time.perf_counter()
    result, clock = train(spec, out, steps, steps, val_batches=int(spec["val_batches"]))
    wall = time.perf_counter() - started
    train_cpu = clock.steps[steps] - (clock.loaded or 0.0)
    metrics = dict(result.metrics or {})
    rate, example = parse_rate(spec, out / "model")
    return {"name": spec["name"], "steps": steps, "cpu_per_step": per_step, "train_cpu_s": train_cpu,
            "wall_s": wall, "val_loss": metrics.get("val_loss"), "val_bpb": metrics.get("val_bpb"),
            "parse_rate": rate, "example": example}


def parse_rate(spec: dict[str, Any], model_dir: Path) -> tuple[float, str]:
    """The share of sampled `def` continuations that parse (the cut: `function_text`), and one sample."""
    import rung
    from rung.records import GenerationRequest

    data = recipe_data(spec)
    config_trainer = data.get("trainer", {})
    overrides = dict(item.split("=", 1) for item in spec.get("overrides") or [] if "=" in item)
    temperature = spec.get("temperature")
    if temperature is None:
        temperature = float(overrides.get("trainer.sample_temperature", config_trainer.get("sample_temperature", 0.8)))
    top_k = spec.get("top_k") or int(overrides.get("trainer.sample_top_k", config_trainer.get("sample_top_k") or 40))
    section = data.get("backend", {})
    backend_name = overrides.get("backend.name", section.get("name", "torch"))
    # The recipe's sampling defaults (min_p, repetition_penalty, token_healing), as the demo samples.
    sampling = {key: overrides.get(f"backend.{key}", section.get(key)) for key in SAMPLING_OPTIONS}
    backend = rung.backend(backend_name, model=str(model_dir),
                           **{key: value for key, value in sampling.items() if value is not None})
    prompts = PROMPTS[: int(spec["prompts"])]
    requests = [GenerationRequest(prompt=prompt, raw=True, max_tokens=int(spec["max_tokens"]),
                                  temperature=temperature, top_k=top_k if temperature else None, seed=1000 * i + j)
                for i, prompt in enumerate(prompts) for j in range(int(spec["samples"]))]
    completions = backend.generate_batch(requests)
    texts = [function_text(r.prompt, c.text, finished=getattr(c, "finish_reason", None) == "stop")
             for r, c in zip(requests, completions)]
    good = [t for t in texts if parses(t)]
    example = (good or texts)[0] if texts else ""
    return len(good) / max(len(texts), 1), example


# ---------------------------------------------------------------------- the parent


def smoke_base(work: Path) -> dict[str, Any]:
    """A tiny corpus made here and a config shaped like the demo's, for --smoke."""
    corpus = work / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    words = ["alpha", "beta", "gamma", "delta", "sigma", "omega", "theta", "kappa"]
    for i in range(24):
        body = "\n\n".join(
            f"def {words[(i + j) % 8]}_{j}(x, y={j}):\n    \"\"\"Return {words[j % 8]}.\"\"\"\n"
            f"    if x > {i + j}:\n        return x + y\n    return x * y\n" for j in range(5))
        (corpus / f"module_{i:02d}.py").write_text(f"import math\n\n\n{body}", encoding="utf-8")
    return {
        "seed": 0,
        "tokenizer": {"name": "bpe", "vocab_size": 320},
        "data": {"name": "corpus", "sources": [{"name": "files", "paths": [str(corpus)]}],
                 "clean": {"minhash": False, "quality": False}, "shards": {"val_fraction": 0.25}, "workers": 1},
        "backend": {"name": "torch", "model": "test", "precision": "fp32"},
        "trainer": {"name": "pretrain", "batch_size": 4, "seq_len": 32, "learning_rate": 1e-2, "warmup_steps": 2,
                    "sample_temperature": 0.5},
    }


def read_candidate(text: str, index: int) -> tuple[str, dict[str, Any], list[str]]:
    """`name: key=value key=value`, `key=value ...`, or a YAML overlay file -> (name, overlay, overrides)."""
    path = Path(text)
    if text.endswith((".yaml", ".yml")) and path.is_file():
        import yaml

        overlay = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(overlay, dict):
            sys.exit(f"{text}: a YAML overlay is a mapping of config sections")
        return path.stem, overlay, []
    name, _, rest = text.partition(":") if ":" in text.split("=", 1)[0] else (f"candidate{index}", "", text)
    return name.strip(), {}, rest.split()


def shards_dir(work: Path, base: dict[str, Any], overlay: dict[str, Any], overrides: list[str]) -> str:
    """One prepared data folder per tokenizer setting, shared by the recipes that agree on it."""
    tokenizer = merge(json.loads(json.dumps(base.get("tokenizer") or {})), overlay.get("tokenizer") or {})
    for item in overrides:
        key, _, value = item.partition("=")
        if key.startswith("tokenizer."):
            tokenizer[key[len("tokenizer."):]] = value
    tag = "-".join(f"{k}{v}" for k, v in sorted(tokenizer.items()) if k in ("vocab_size", "name"))
    return str(work / f"data-{tag or 'default'}")


def run_child(spec: dict[str, Any], work: Path, reuse: bool = False) -> dict[str, Any]:
    spec_path = work / f"spec-{spec['name']}.json"
    result_path = work / f"result-{spec['name']}.json"
    if reuse and result_path.is_file() and spec_path.is_file():  # a result is removed when its spec is rewritten
        if json.loads(spec_path.read_text(encoding="utf-8")) == spec:  # the very recipe, budget and measures
            print(f"{spec['name']}: reusing {result_path} (--reuse: its spec is unchanged)", flush=True)
            return json.loads(result_path.read_text(encoding="utf-8"))
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    result_path.unlink(missing_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.setdefault("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=17179869184")
    log = work / f"log-{spec['name']}.txt"
    with open(log, "w", encoding="utf-8") as sink:
        done = subprocess.run([sys.executable, __file__, "--child", str(spec_path)], stdout=sink,
                              stderr=subprocess.STDOUT, env=env, cwd=str(ROOT))
    if done.returncode:
        tail = log.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise SystemExit(f"recipe {spec['name']} failed (exit {done.returncode}); the end of {log}:\n{tail}")
    return json.loads(result_path.read_text(encoding="utf-8"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(ROOT / "examples" / "pretrain_stdlib.yaml"))
    parser.add_argument("--cpu-minutes", dest="cpu_minutes", type=float, default=2.0,
                        help="training CPU time per recipe (process time, one thread)")
    parser.add_argument("--candidate", action="append", default=[],
                        help="'name: key=value ...' overrides, or a YAML overlay file (repeatable)")
    parser.add_argument("--current-steps", dest="current_steps", type=int, default=None,
                        help="instead of --cpu-minutes: the CPU time of this many steps of the current recipe "
                             "(each recipe's steps from its own probed cost; e.g. 700, the demo's)")
    parser.add_argument("--current", default="", help="overrides applied to the current recipe too")
    parser.add_argument("--work", default=str(ROOT / "runs" / "demo_budget"))
    parser.add_argument("--probe-steps", dest="probe_steps", type=int, default=20)
    parser.add_argument("--samples", type=int, default=4, help="samples per prompt")
    parser.add_argument("--prompts", type=int, default=len(PROMPTS), help=f"how many of the {len(PROMPTS)} prompts")
    parser.add_argument("--max-tokens", dest="max_tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=None, help="default: the recipe's sample_temperature")
    parser.add_argument("--top-k", dest="top_k", type=int, default=None)
    parser.add_argument("--val-batches", dest="val_batches", type=int, default=32)
    parser.add_argument("--jobs", type=int, default=1, help="recipes trained at once (after the probes)")
    parser.add_argument("--reuse", action="store_true",
                        help="take a recipe's result from --work when its spec (recipe, budget, measures) is unchanged")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parse_args(parser, SMOKE)
    if args.child:
        spec = json.loads(Path(args.child).read_text(encoding="utf-8"))
        result = run_recipe(spec)
        Path(spec["work"], f"result-{spec['name']}.json").write_text(json.dumps(result), encoding="utf-8")
        return

    if args.smoke:
        import tempfile

        work = Path(tempfile.mkdtemp(prefix="demo_budget_"))
        base = smoke_base(work)
        candidates = args.candidate or ["muon-qk: trainer.optimizer=muon backend.architecture.qk_norm=true"]
    else:
        import yaml

        work = Path(args.work)
        work.mkdir(parents=True, exist_ok=True)
        base = yaml.safe_load(Path(args.config).read_text(encoding="utf-8"))
        base.pop("output_dir", None)
        candidates = args.candidate
    common = {key: getattr(args, key) for key in ("cpu_minutes", "probe_steps", "samples", "prompts", "max_tokens",
                                                    "temperature", "top_k", "val_batches", "current_steps")}
    recipes = [("current", {}, args.current.split())] + [read_candidate(c, i) for i, c in enumerate(candidates, 1)]
    specs = []
    for name, overlay, overrides in recipes:
        overrides = args.current.split() + overrides if name != "current" else overrides
        data_dir = shards_dir(work, base, overlay, overrides)
        specs.append({**common, "name": name, "work": str(work), "base": base, "overlay": overlay,
                      "overrides": [f"data.shards.dir={data_dir}", *overrides]})
    source = "smoke" if args.smoke else args.config
    budget = (f"the CPU time of {args.current_steps} steps of the current recipe" if args.current_steps
              else f"{args.cpu_minutes:g} min")
    print(f"CPU budget {budget} of training per recipe (process time, 1 thread); "
          f"{args.samples} samples x {args.prompts} prompts, {args.max_tokens} tokens; config {source}")
    started = time.perf_counter()
    # The first recipe of each data folder runs alone (it prepares the data); the rest may run at once.
    first: dict[str, dict] = {}
    for spec in specs:
        first.setdefault(spec["overrides"][0], spec)
    results: dict[str, dict[str, Any]] = {}
    for spec in first.values():
        results[spec["name"]] = run_child(spec, work, args.reuse)
        for other in specs:  # the current recipe's cost per step sets --current-steps' budget
            other["current_cost"] = results["current"]["cpu_per_step"]
    rest = [s for s in specs if s["name"] not in results]
    with ThreadPoolExecutor(max_workers=max(args.jobs, 1)) as pool:
        for spec, result in zip(rest, pool.map(lambda s: run_child(s, work, args.reuse), rest)):
            results[spec["name"]] = result
    for spec in specs:
        r = results[spec["name"]]
        bpb = f"{r['val_bpb']:.4f}" if r["val_bpb"] is not None else "n/a"
        loss = f"{r['val_loss']:.4f}" if r["val_loss"] is not None else "n/a"
        what = " ".join(spec["overrides"][1:]) or "the demo"
        print(f"{r['name']:<14} {r['steps']:>6} steps ({r['cpu_per_step']:.3f} CPU s/step, trained "
              f"{r['train_cpu_s'] / 60:.2f} CPU min, {r['wall_s'] / 60:.2f} min wall): held-out {bpb} bits/byte, "
              f"{loss} nats/token; parse rate {r['parse_rate']:.3f}   [{what}]")
    current = results["current"]
    for spec in specs[1:]:
        r = results[spec["name"]]
        ratio = (r["val_bpb"] / current["val_bpb"]) if r["val_bpb"] and current["val_bpb"] else math.nan
        print(f"candidate {r['name']} / current: bits per byte {ratio:.3f}x "
              f"({r['val_bpb'] or math.nan:.4f} vs {current['val_bpb'] or math.nan:.4f}), "
              f"parse rate {r['parse_rate']:.3f} vs {current['parse_rate']:.3f}")
    print(f"best sample of current:\n{current['example']}")
    print(f"total wall {time.perf_counter() - started:.0f} s; runs in {work}")


if __name__ == "__main__":
    main()

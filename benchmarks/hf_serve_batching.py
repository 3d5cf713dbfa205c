"""rung serve on the hf backend: continuous batching (`HFBackend.decode_slots`) against the same
server answering one request at a time (`-o continuous_batching=false`), side by side.

The model is rung's preset (`small` by default) with fresh weights, saved in the transformers
format with rung's byte tokenizer (benchmarks/dpo_vs_trl.write_model), loaded by the `hf`
backend (transformers' LlamaForCausalLM). Both servers are `rung serve -b hf` subprocesses on
127.0.0.1, up at once, each with `--threads` CPU threads (fp32 on the CPU); the rounds
alternate between them (a shared machine's load changes over a run), and in each round
`--clients` concurrent clients each send `--requests` streamed /v1/completions at temperature 0
for `--new` tokens (a fresh model's greedy text has no end of text: every request runs to
max_tokens). After one warm-up request per server.

Prints each round's requests/s and output tokens/s per server, and the ratio batched / one
at a time: per round, its median, and its spread over the rounds.

With `--backend jax` the same folder is served by rung's own model in JAX (`rung serve -b jax`,
`JaxBackend.decode_slots`: rung_jax.slots) against `-o continuous_batching=false`; XLA's CPU
runtime takes no thread count, so each jax server is pinned to `--threads` CPUs (taskset). Its
programs compile on first use (the batch's per row-count step programs, the one-at-a-time
server's generate programs), so before the timed rounds each jax server also runs two untimed
rounds of `--clients` clients, and the first request's and those rounds' seconds are printed
apart from the figures (the compile time).

    .venv/bin/python benchmarks/hf_serve_batching.py                 # 8 clients, 64 tokens, 3 rounds
    .venv/bin/python benchmarks/hf_serve_batching.py --clients 16 --rounds 5
    .venv/bin/python benchmarks/hf_serve_batching.py --backend jax
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from dpo_vs_trl import write_model
from serve_vs_transformers import HEADER, Figures, Server, body_of, free_port, load, stream_completion
from smoke import parse_args

SMOKE = {"preset": "test", "clients": 3, "requests": 1, "new": 4, "rounds": 1}
WARM_ROUNDS = 2  # jax: untimed rounds first (which programs a round compiles depends on its timing)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=2, help="requests per client in a round, one after another")
    parser.add_argument("--new", type=int, default=64, help="new tokens per request")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each server, alternating")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of each server (OMP_NUM_THREADS)")
    parser.add_argument("--device", default="cpu", help="where the servers run the model (cpu, cuda)")
    parser.add_argument("--backend", choices=["hf", "jax"], default="hf",
                        help="the servers' backend: hf (transformers) or jax (rung's model in JAX)")
    args = parse_args(parser, SMOKE)

    import torch
    import transformers

    rung_cmd = str(Path(sys.executable).parent / "rung")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONUNBUFFERED": "1", "RUNG_LOAD_PLUGINS": "rung-torch,rung-hf,rung-tokenizers,rung-serve"}
    pin: list[str] = []
    if args.backend == "jax":
        import jax

        env["RUNG_LOAD_PLUGINS"] += ",rung-jax"
        if args.device == "cpu":
            env["JAX_PLATFORMS"] = "cpu"
            cpus = sorted(os.sched_getaffinity(0))[:max(1, args.threads)]
            pin = ["taskset", "-c", ",".join(map(str, cpus))]
        engine = f"jax {jax.__version__}"
    else:
        engine = f"torch {torch.__version__}, transformers {transformers.__version__}"
    work = Path(tempfile.mkdtemp(prefix="rung-hf-serve-bench-"))
    try:
        folder = write_model(work, args.preset)
        print(f"model: rung preset {args.preset!r} (fresh weights, byte tokenizer) loaded by the {args.backend} "
              f"backend; {engine}; {args.clients} clients x "
              f"{args.requests} requests per round, {args.new} greedy tokens each, streamed; {args.rounds} rounds; "
              f"{args.threads} thread(s) per server, on {os.cpu_count()} CPUs"
              f"{' (smoke: figures mean nothing)' if args.smoke else ''}", flush=True)
        base = pin + [rung_cmd, "serve", "-b", args.backend, "-m", str(folder), "-o", f"device={args.device}",
                      "--name", "model", "--max-slots", str(max(1, args.clients)), "--log-level", "warning"]
        labels = {"batched": f"{args.backend} decode_slots", "alone": f"{args.backend} one at a time"}
        commands = {"batched": base, "alone": base + ["-o", "continuous_batching=false"]}
        with Server(labels["batched"], commands["batched"] + ["--port", str(port_a := free_port())], port_a, "model",
                    env, work / "batched.log") as batched, \
             Server(labels["alone"], commands["alone"] + ["--port", str(port_b := free_port())], port_b, "model",
                    env, work / "alone.log") as alone:
            servers = {"batched": batched, "alone": alone}
            for server in servers.values():
                started = time.perf_counter()
                asyncio.run(stream_completion(server.port, body_of("model", 0, 0, args.new)))  # warm-up
                first = time.perf_counter() - started
                if args.backend == "jax":  # the programs a full batch needs compile here, untimed
                    rounds = []
                    for _ in range(WARM_ROUNDS):
                        started = time.perf_counter()
                        asyncio.run(load(server.port, "model", args.clients, args.requests, args.new))
                        rounds.append(time.perf_counter() - started)
                    print(f"{server.label}: warm-up (compiling): first request {first:.2f} s, {WARM_ROUNDS} rounds "
                          f"of {args.clients} clients " + ", ".join(f"{r:.2f} s" for r in rounds), flush=True)
            print(f"{'round':<6} " + HEADER, flush=True)
            ratios, figures = [], {key: [] for key in servers}
            for number in range(args.rounds):
                order = list(servers) if number % 2 == 0 else list(reversed(servers))
                got = {}
                for key in order:
                    server = servers[key]
                    replies = asyncio.run(load(server.port, "model", args.clients, args.requests, args.new))
                    if any(r.tokens != args.new for r in replies):
                        raise RuntimeError(f"{server.label}: a reply did not run to {args.new} tokens")
                    got[key] = Figures.of(server.label, args.clients, replies)
                    figures[key].append(got[key])
                    print(f"{number:<6} " + got[key].row(), flush=True)
                ratios.append(got["batched"].requests_per_s / got["alone"].requests_per_s)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    for key, label in labels.items():
        rates = [f.requests_per_s for f in figures[key]]
        print(f"{label}: requests/s median {statistics.median(rates):.2f} (min {min(rates):.2f}, max {max(rates):.2f})")
    print("per-round ratios: " + ", ".join(f"{r:.2f}x" for r in ratios))
    print(f"ratio {args.backend} decode_slots / one at a time, {args.clients} clients: requests/s "
          f"{statistics.median(ratios):.2f}x median (min {min(ratios):.2f}x, max {max(ratios):.2f}x over "
          f"{len(ratios)} rounds)")


if __name__ == "__main__":
    main()

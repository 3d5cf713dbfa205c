"""`rung compare`'s wall time against the same requests sent one by one through the openai SDK.

Starts the test suite's fake LLM server (tests/fake_llm_server.py) in its own process with a
fixed delay before every answer (`response_delay_s`, what a model's latency looks like to a
client), then, for one suite of 1 prompt x 2 backends (concurrency 4 and 8) x N cases:

  one by one   every request through `openai.OpenAI().chat.completions.create`, in turn
  rung         `rung_compare.runner.run_suite` on the suite (a fresh cache: everything asked)

Each backend runs within its own concurrency and both run side by side, so the suite should
take about as long as its slowest backend alone, ceil(N / 4) x delay, rather than the two
backends one after another (ceil(N / 4) + ceil(N / 8)) x delay, or 2N x delay one by one.

    .venv/bin/python benchmarks/compare_concurrency.py                  # 32 cases, 0.5 s delay
    .venv/bin/python benchmarks/compare_concurrency.py --cases 200 --delay 0.5
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from smoke import parse_args

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-bench-key"
SMOKE = {"cases": 4, "delay": 0.05}
CONCURRENCY = {"gpt-test": 4, "gpt-4o-mini": 8}
SERVER = """
import sys, time
sys.path.insert(0, {root!r})
from tests.fake_llm_server import FakeLLMServer
server = FakeLLMServer(api_key={key!r}, record=False)
server.response_delay_s = {delay!r}
server.max_requests = 10**9
print(server.port, flush=True)
server._httpd.serve_forever(poll_interval=0.05)
"""


def start_server(delay: float) -> tuple[subprocess.Popen, int]:
    code = SERVER.format(root=str(ROOT), key=KEY, delay=delay)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    return proc, int(proc.stdout.readline())


def write_suite(folder: Path, base_url: str, cases: int) -> Path:
    (folder / "cases.jsonl").write_text("".join(json.dumps({"n": i}) + "\n" for i in range(cases)))
    suite = {
        "prompts": ["Count to {{n}} and stop"],
        "backends": [{"name": "openai", "model": model, "base_url": base_url, "api_key": KEY,
                      "concurrency": limit, "max_retries": 0} for model, limit in CONCURRENCY.items()],
        "defaultTest": {"assert": [{"type": "contains", "value": "{{n}}"}]},
        "cases": "cases.jsonl",
    }
    path = folder / "suite.yaml"
    path.write_text(json.dumps(suite, indent=1))
    return path


def one_by_one(base_url: str, cases: int) -> float:
    import openai

    client = openai.OpenAI(api_key=KEY, base_url=base_url, max_retries=0)
    start = time.perf_counter()
    for model in CONCURRENCY:
        for i in range(cases):
            reply = client.chat.completions.create(model=model, messages=[
                {"role": "user", "content": f"Count to {i} and stop"}])
            assert str(i) in reply.choices[0].message.content
    took = time.perf_counter() - start
    client.close()
    return took


def suite_run(folder: Path, base_url: str, cases: int) -> float:
    import rung_openai.backend  # noqa: F401  (the SDK's import is not the suite's time)
    from rung_compare.cache import ReplyCache
    from rung_compare.runner import run_suite
    from rung_compare.suite import load_suite

    suite = load_suite(write_suite(folder, base_url, cases))
    start = time.perf_counter()
    run = run_suite(suite, ReplyCache(folder / "cache"))
    took = time.perf_counter() - start
    assert sum(run.asked.values()) == 2 * cases and all(r.passed for r in run.results)
    return took


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=32, help="test cases (requests per backend)")
    parser.add_argument("--delay", type=float, default=0.5, help="seconds the server waits before each answer")
    args = parse_args(parser, SMOKE, argv)
    sys.path.insert(0, str(ROOT))
    proc, port = start_server(args.delay)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        sequential = one_by_one(base_url, args.cases)
        with tempfile.TemporaryDirectory() as folder:
            wall = suite_run(Path(folder), base_url, args.cases)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    slowest = max(math.ceil(args.cases / limit) for limit in CONCURRENCY.values()) * args.delay
    summed = sum(math.ceil(args.cases / limit) for limit in CONCURRENCY.values()) * args.delay
    limits = " and ".join(str(v) for v in CONCURRENCY.values())
    print(f"suite: 1 prompt x 2 openai backends (concurrency {limits}) x {args.cases} cases; "
          f"server delay {args.delay:g} s per request")
    print(f"one by one through the openai SDK: {sequential:.2f} s for {2 * args.cases} requests")
    print(f"rung compare: {wall:.2f} s; slowest backend alone ceil(n/c) x delay = {slowest:.2f} s; "
          f"the backends one after another = {summed:.2f} s")
    print(f"rung compare / one-by-one SDK: wall {wall / sequential:.3f}x (speed-up {sequential / wall:.1f}x); "
          f"{wall / slowest:.2f}x the slowest backend's bound, {wall / summed:.2f}x the sum of the backends'")


if __name__ == "__main__":
    main()

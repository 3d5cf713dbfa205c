"""What rung's hosted backends add on top of the official SDKs, against a local server.

Starts the fake LLM server of the test suite (tests/fake_llm_server.py) in its own process
on 127.0.0.1, then times, for OpenAI and Anthropic alike, the same requests made two ways,
interleaved (order alternating) so that machine noise hits both equally:

  sdk   the SDK client called directly (client.chat.completions.create / client.messages.create)
  rung  the rung backend (backend.generate / backend.stream), same SDK settings underneath

Figures: median latency of a whole request (non-streaming), median time to the first
streamed text, median time of a whole stream, and the client process's CPU time per request
and per stream (what the framework itself costs; least disturbed by a busy machine); the
ratio rung/sdk of each (goal <= 1.05).

    .venv/bin/python benchmarks/api_overhead.py            # 300 requests of each kind
    .venv/bin/python benchmarks/api_overhead.py --n 1000 --provider openai
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from smoke import parse_args

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-bench-key"
SMOKE = {"n": 2, "warmup": 1}
PROMPT = "Name three long rivers of the world and say where each one flows into the sea"


def start_server() -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "fake_llm_server.py"), KEY],
                            stdout=subprocess.PIPE, text=True)
    port = int(proc.stdout.readline())
    return proc, port


def openai_pair(port: int):
    import openai

    import rung
    from rung.records import GenerationRequest

    base = f"http://127.0.0.1:{port}/v1"
    client = openai.OpenAI(api_key=KEY, base_url=base, max_retries=2, timeout=60)
    backend = rung.backend("openai", model="gpt-test", api_key=KEY, base_url=base, max_retries=2, timeout=60)
    request = GenerationRequest(prompt=PROMPT, max_tokens=64)
    messages = [{"role": "user", "content": PROMPT}]

    def sdk_generate():
        r = client.chat.completions.create(model="gpt-test", messages=messages, max_tokens=64)
        return r.choices[0].message.content, r.usage.completion_tokens

    def rung_generate():
        c = backend.generate(request)
        return c.text, c.usage.completion_tokens

    def sdk_stream():
        start, first = time.perf_counter(), None
        for chunk in client.chat.completions.create(model="gpt-test", messages=messages, max_tokens=64, stream=True,
                                                    stream_options={"include_usage": True}):
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter() - start
        return first, time.perf_counter() - start

    def rung_stream():
        start, first = time.perf_counter(), None
        for delta in backend.stream(request):
            if first is None and delta.text:
                first = time.perf_counter() - start
        return first, time.perf_counter() - start

    return sdk_generate, rung_generate, sdk_stream, rung_stream


def anthropic_pair(port: int):
    import anthropic

    import rung
    from rung.records import GenerationRequest

    base = f"http://127.0.0.1:{port}"
    client = anthropic.Anthropic(api_key=KEY, base_url=base, max_retries=2, timeout=60)
    backend = rung.backend("anthropic", model="claude-test", api_key=KEY, base_url=base, max_retries=2, timeout=60)
    request = GenerationRequest(prompt=PROMPT, max_tokens=64)
    messages = [{"role": "user", "content": PROMPT}]

    def sdk_generate():
        m = client.messages.create(model="claude-test", max_tokens=64, messages=messages)
        return "".join(b.text for b in m.content if b.type == "text"), m.usage.output_tokens

    def rung_generate():
        c = backend.generate(request)
        return c.text, c.usage.completion_tokens

    def sdk_stream():
        start, first = time.perf_counter(), None
        for event in client.messages.create(model="claude-test", max_tokens=64, messages=messages, stream=True):
            if first is None and event.type == "content_block_delta" and getattr(event.delta, "text", None):
                first = time.perf_counter() - start
        return first, time.perf_counter() - start

    def rung_stream():
        start, first = time.perf_counter(), None
        for delta in backend.stream(request):
            if first is None and delta.text:
                first = time.perf_counter() - start
        return first, time.perf_counter() - start

    return sdk_generate, rung_generate, sdk_stream, rung_stream


def timed(fn) -> tuple[float, float]:
    """Wall seconds and this process's CPU seconds of one call."""
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - start, time.process_time() - cpu


def measure(name: str, pair, n: int, warmup: int) -> list[tuple[str, float, float]]:
    sdk_generate, rung_generate, sdk_stream, rung_stream = pair
    assert sdk_generate() == rung_generate(), "the two paths must return the same answer"
    for _ in range(warmup):
        sdk_generate(), rung_generate(), sdk_stream(), rung_stream()
    lat = {"sdk": [], "rung": []}
    ttft = {"sdk": [], "rung": []}
    whole = {"sdk": [], "rung": []}
    cpu = {"sdk": [], "rung": []}
    cpu_stream = {"sdk": [], "rung": []}
    for i in range(n):
        order = (("sdk", sdk_generate, sdk_stream), ("rung", rung_generate, rung_stream))
        for who, gen, stream in (order if i % 2 == 0 else order[::-1]):
            wall, used = timed(gen)
            lat[who].append(wall)
            cpu[who].append(used)
            before = time.process_time()
            first, total = stream()
            cpu_stream[who].append(time.process_time() - before)
            ttft[who].append(first)
            whole[who].append(total)
    rows = []
    for label, data in (("request latency", lat), ("time to first token", ttft), ("whole stream", whole),
                        ("client CPU per request", cpu), ("client CPU per stream", cpu_stream)):
        sdk, ours = statistics.median(data["sdk"]), statistics.median(data["rung"])
        rows.append((f"{name} {label}", sdk, ours))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=300, help="requests of each kind and path")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--provider", choices=["openai", "anthropic", "both"], default="both")
    args = parse_args(parser, SMOKE)

    server, port = start_server()
    try:
        rows = []
        if args.provider in ("openai", "both"):
            rows += measure("openai", openai_pair(port), args.n, args.warmup)
        if args.provider in ("anthropic", "both"):
            rows += measure("anthropic", anthropic_pair(port), args.n, args.warmup)
    finally:
        server.terminate()
        server.wait(timeout=10)

    print(f"rung backend vs the SDK called directly, local server, {args.n} requests each, medians")
    print(f"{'':36} {'sdk ms':>9} {'rung ms':>9} {'rung/sdk':>9}")
    for label, sdk, ours in rows:
        print(f"{label:36} {sdk * 1e3:9.3f} {ours * 1e3:9.3f} {ours / sdk:9.3f}x")


if __name__ == "__main__":
    main()

"""Serving speed: `rung serve` (continuous batching) against `transformers serve`, with and without
its `--continuous-batching`, on one model folder.

The model is rung's preset (`small` by default) with fresh weights, saved in the transformers
format with rung's byte tokenizer; every server loads that folder, in its own subprocess on
127.0.0.1, one server at a time (none competes with another), with `--threads` CPU threads
(OMP_NUM_THREADS; fp32 on the CPU). Every request is a streamed /v1/completions at
temperature 0 for `--new` tokens (a fresh model's greedy text has no end of text, so each
request runs to max_tokens; the table counts the tokens the servers report).

Load: `--clients` concurrent clients (asyncio, a plain HTTP/1.1 client of a few lines: the
client costs the same whichever server answers), each sending `--requests` requests one
after another. Then 1 client sending `--requests` requests; for rung serve these alternate
with the same requests through rung's own `backend.stream` in this process (the floor rung
serve's latency is measured against). After one warm-up request per server.

Prints, per server and load: requests/s and output tokens/s (over the whole run), p50 and p99
latency (request sent to last event), p50 and p99 time to first token; and the ratios (goal:
rung serve >= 2x the requests/s of transformers' continuous batching, with a lower p99; at 1
client, latency no worse than rung's generate).

    .venv/bin/python benchmarks/serve_vs_transformers.py            # several minutes on a 2-core CPU
    .venv/bin/python benchmarks/serve_vs_transformers.py --rung-only --clients 64 --requests 4
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from dpo_vs_trl import write_model
from smoke import parse_args

SMOKE = {"preset": "test", "clients": 3, "requests": 2, "new": 4}
HOST = "127.0.0.1"
MAX_PROMPT_TOKENS = 64  # prompt_of's longest prompt is 60 bytes: at most 60 tokens plus specials
CB_BLOCK_TOKENS = 32
REQUEST_TIMEOUT_S = 600


def prompt_of(client: int, index: int) -> str:
    """Prompts of a few different lengths (18 to 60 bytes)."""
    return f"Client {client} asks question {index}:" + " and then" * ((client + index) % 5)


@dataclass
class Reply:
    started: float
    first_token: float | None
    ended: float
    tokens: int


async def stream_completion(port: int, body: dict) -> Reply:
    """One streamed /v1/completions request on its own connection, read to its last event; a
    server that stops answering fails the run instead of hanging it."""
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT_S):
            return await _stream_completion(port, body)
    except TimeoutError:
        raise RuntimeError(f"port {port}: no complete reply in {REQUEST_TIMEOUT_S} s") from None


async def _stream_completion(port: int, body: dict) -> Reply:
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection(HOST, port)
    payload = json.dumps({**body, "stream": True, "stream_options": {"include_usage": True}}).encode()
    writer.write(f"POST /v1/completions HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode() + payload)
    await writer.drain()
    status = (await reader.readline()).split()
    headers = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    if len(status) < 2 or status[1] != b"200":
        raise RuntimeError(f"port {port}: HTTP {status[1:2]}: {(await reader.read())[:300]!r}")
    first, tokens, pieces, buffer = None, None, 0, b""
    chunked = headers.get("transfer-encoding", "").lower() == "chunked"
    while True:
        if chunked:
            size = int((await reader.readline()).split(b";")[0], 16)
            if size == 0:
                break
            data = await reader.readexactly(size + 2)
            buffer += data[:-2]
        else:
            data = await reader.read(65536)
            if not data:
                break
            buffer += data
        *events, buffer = buffer.split(b"\n\n")
        for event in events:
            for line in event.split(b"\n"):
                if not line.startswith(b"data:") or line[5:].strip() == b"[DONE]":
                    continue
                chunk = json.loads(line[5:])
                if any(choice.get("text") for choice in chunk.get("choices", ())):
                    pieces += 1
                    if first is None:
                        first = time.perf_counter()
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
    writer.close()
    return Reply(started, first, time.perf_counter(), tokens if tokens is not None else pieces)


async def load(port: int, model: str, clients: int, requests: int, new: int) -> list[Reply]:
    async def client(number: int) -> list[Reply]:
        return [await stream_completion(port, body_of(model, number, i, new)) for i in range(requests)]

    return [reply for replies in await asyncio.gather(*(client(c) for c in range(clients))) for reply in replies]


def body_of(model: str, client: int, index: int, new: int) -> dict:
    return {"model": model, "prompt": prompt_of(client, index), "max_tokens": new, "temperature": 0}


def percentile(values: list[float], q: float) -> float:
    """Nearest rank: the smallest value with at least q of them at or below it."""
    ordered = sorted(values)
    return ordered[min(len(ordered), max(1, math.ceil(q * len(ordered)))) - 1]


@dataclass
class Figures:
    label: str
    clients: int
    requests_per_s: float
    tokens_per_s: float
    p50: float
    p99: float
    ttft_p50: float
    ttft_p99: float

    @classmethod
    def of(cls, label: str, clients: int, replies: list[Reply]) -> "Figures":
        latency = [r.ended - r.started for r in replies]
        # 1 client: the requests' own time (its requests alternate with others' in `measure`)
        wall = sum(latency) if clients == 1 else max(r.ended for r in replies) - min(r.started for r in replies)
        ttft = [(r.first_token or r.ended) - r.started for r in replies]
        return cls(label, clients, len(replies) / wall, sum(r.tokens for r in replies) / wall,
                   percentile(latency, 0.5), percentile(latency, 0.99), percentile(ttft, 0.5), percentile(ttft, 0.99))

    def row(self) -> str:
        return (f"{self.label:<34} {self.clients:>7} {self.requests_per_s:>8.2f} {self.tokens_per_s:>10.1f} "
                f"{self.p50:>8.3f} {self.p99:>8.3f} {self.ttft_p50:>9.3f} {self.ttft_p99:>9.3f}")


HEADER = (f"{'server':<34} {'clients':>7} {'req/s':>8} {'out tok/s':>10} {'p50 s':>8} {'p99 s':>8} "
          f"{'ttft p50':>9} {'ttft p99':>9}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


class Server:
    """A server command in a subprocess, its output in a log file; up once /health answers."""

    def __init__(self, label: str, args: list[str], port: int, model: str, env: dict, log: Path) -> None:
        self.label, self.args, self.port, self.model, self.env, self.log = label, args, port, model, env, log

    def __enter__(self) -> "Server":
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT, env=self.env)
        started = time.perf_counter()
        while not self._healthy():
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.label} exited {self.proc.returncode}:\n{self.log.read_text()[-2000:]}")
            if time.perf_counter() - started > 300:
                raise RuntimeError(f"{self.label} did not answer /health in 300 s:\n{self.log.read_text()[-2000:]}")
            time.sleep(0.2)
        self.startup_s = time.perf_counter() - started
        return self

    def _healthy(self) -> bool:
        import http.client

        try:
            connection = http.client.HTTPConnection(HOST, self.port, timeout=5)
            connection.request("GET", "/health")
            return connection.getresponse().status == 200
        except OSError:
            return False

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class InProcess:
    """rung's own backend.stream in this process, on the model folder, with the servers' threads."""

    def __init__(self, folder: Path, args) -> None:
        import torch

        import rung

        torch.set_num_threads(args.threads)
        self.backend, self.new = rung.backend("torch", model=str(folder), device=args.device), args.new
        self.reply(0)  # warm-up

    def reply(self, index: int) -> Reply:
        from rung_serve.openai_format import completion_request

        started, first, tokens = time.perf_counter(), None, 0
        for delta in self.backend.stream(completion_request(body_of("model", 0, index, self.new))):
            if delta.text and first is None:
                first = time.perf_counter()
            if delta.usage is not None:
                tokens = delta.usage.completion_tokens
        return Reply(started, first, time.perf_counter(), tokens)


def measure(server: Server, args, alongside: InProcess | None = None) -> list[Figures]:
    """The server under `args.clients` clients, then 1; with `alongside`, the 1-client requests
    alternate with the same requests in process (a shared machine's load changes over a run)."""
    asyncio.run(stream_completion(server.port, body_of(server.model, 0, 0, args.new)))  # warm-up
    out = [Figures.of(server.label, args.clients, asyncio.run(load(server.port, server.model, args.clients,
                                                                    args.requests, args.new)))]
    served, alone = [], []
    for i in range(args.requests):
        served.append(asyncio.run(stream_completion(server.port, body_of(server.model, 0, i, args.new))))
        if alongside is not None:
            alone.append(alongside.reply(i))
    out.append(Figures.of(server.label, 1, served))
    if alongside is not None:
        out.append(Figures.of("rung generate (in process)", 1, alone))
    for figures in out:
        print(figures.row(), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=8, help="requests per client, one after another")
    parser.add_argument("--new", type=int, default=64, help="new tokens per request")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of each server (OMP_NUM_THREADS)")
    parser.add_argument("--rung-only", action="store_true", help="skip transformers serve")
    parser.add_argument("--device", default="cpu", help="where both servers run the model (cpu, cuda)")
    args = parse_args(parser, SMOKE)

    bin_dir = Path(sys.executable).parent
    rung_cmd, transformers_cmd = str(bin_dir / "rung"), str(bin_dir / "transformers")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONUNBUFFERED": "1", "RUNG_LOAD_PLUGINS": "rung-torch,rung-tokenizers,rung-serve"}
    skip_transformers = None
    if args.rung_only:
        skip_transformers = "--rung-only"
    elif not Path(transformers_cmd).exists() and shutil.which("transformers") is None:
        skip_transformers = "no transformers command in this environment"
    import torch
    import transformers

    work = Path(tempfile.mkdtemp(prefix="rung-serve-bench-"))
    try:
        folder = write_model(work, args.preset)
        print(f"model: rung preset {args.preset!r} (fresh weights, byte tokenizer) at {folder}; torch "
              f"{torch.__version__}, transformers {transformers.__version__}; {args.clients} clients x "
              f"{args.requests} requests, {args.new} greedy tokens each, streamed; {args.threads} thread(s) "
              f"per server, on {os.cpu_count()} CPUs{' (smoke: figures mean nothing)' if args.smoke else ''}",
              flush=True)
        print(HEADER, flush=True)
        figures: dict[tuple[str, int], Figures] = {}
        servers = [("rung serve", [rung_cmd, "serve", "-b", "torch", "-m", str(folder), "-o", f"device={args.device}",
                                   "--name", "model", "--max-slots", str(max(1, args.clients)),
                                   "--log-level", "warning"], "model")]
        if skip_transformers is None:
            base = [transformers_cmd, "serve", str(folder), "--host", HOST, "--device", args.device,
                    "--dtype", "float32", "--log-level", "warning"]
            # Its continuous batching sizes its KV cache to 60-90% of the free memory unless told a
            # size: on a 24 GiB CPU machine its first request spent 90 s in page faults (and a busier
            # machine can swap). Room for every client's longest request, as rung's slots hold.
            blocks = args.clients * -(-(MAX_PROMPT_TOKENS + args.new) // CB_BLOCK_TOKENS)
            cb = ["--continuous-batching", "--cb-block-size", str(CB_BLOCK_TOKENS), "--cb-num-blocks", str(blocks)]
            servers += [("transformers serve", base, str(folder)),
                        ("transformers serve --cb", base + cb, str(folder))]
        for label, command, model in servers:
            port = free_port()
            command = command + ["--port", str(port)]
            with Server(label, command, port, model, env, work / f"{label.replace(' ', '_')}.log") as server:
                print(f"{label}: up in {server.startup_s:.1f} s", flush=True)
                for f in measure(server, args, InProcess(folder, args) if label == "rung serve" else None):
                    figures[(f.label, f.clients)] = f
    finally:
        shutil.rmtree(work, ignore_errors=True)

    if skip_transformers is not None:
        print(f"transformers serve skipped: {skip_transformers}")
    for other in ("transformers serve --cb", "transformers serve"):
        theirs = figures.get((other, args.clients))
        if theirs is None:
            continue
        ours = figures[("rung serve", args.clients)]
        print(f"ratio rung serve / {other}, {args.clients} clients: requests/s "
              f"{ours.requests_per_s / theirs.requests_per_s:.2f}x (goal >= 2x vs --cb), p99 latency "
              f"{ours.p99 / theirs.p99:.2f}x (goal < 1x), ttft p50 {ours.ttft_p50 / theirs.ttft_p50:.2f}x")
    one, alone = figures[("rung serve", 1)], figures[("rung generate (in process)", 1)]
    print(f"1 client: rung serve / rung generate, p50 latency: {one.p50 / alone.p50:.2f}x (goal <= 1x plus HTTP)")


if __name__ == "__main__":
    main()

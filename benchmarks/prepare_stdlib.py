"""Data preparation throughput on the Python standard library corpus (~31.5 MB of .py).

Four runs, each in its own process (so its memory and CPU time are its own):

  encode    baseline: read every file and encode it with `tokenizers`' own batch encoder
            (`Tokenizer.encode_batch`, all cores through its Rust threads) in one process,
            with the tokenizer `full` trained; no cleaning, no dedup, nothing written
  enc_fast  the same with `encode_batch_fast` (no character offsets), what the shards use
  full      `rung_pretrain.prepare`: read, clean (NFC, control chars, length, quality), exact
            + MinHash dedup, train a byte-level BPE (vocab 8192), tokenize into shards, on all
            cores (datatrove LocalPipelineExecutor)
  shards    the same with the tokenizer given (`tokenizer.path`): everything but training

Figures per run: wall seconds, CPU seconds of the whole process tree, MB/s of corpus (input
bytes / wall), peak memory summed over every process of the tree (PSS, so pages that forked
workers share with their parent count once; polled every 50 ms), and
the ratio of wall time to the baseline measured in the same invocation.

    .venv/bin/python benchmarks/prepare_stdlib.py               # vocab 8192, all cores
    .venv/bin/python benchmarks/prepare_stdlib.py --vocab 4096 --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

from smoke import parse_args

ROOT = Path(__file__).resolve().parents[1]
STDLIB = sysconfig.get_paths()["stdlib"]
# A small package of the stdlib (a few files) and a small vocabulary: seconds, same stages.
SMOKE = {"vocab": 512, "workers": 1, "stdlib": os.path.join(STDLIB, "json")}


def stdlib_files(root: str) -> list[Path]:
    root = Path(root)
    out = []
    for folder, dirs, files in os.walk(root):
        skip = ("site-packages", "dist-packages", "__pycache__")
        dirs[:] = sorted(d for d in dirs if d not in skip and not d.startswith("."))
        out += [Path(folder, f) for f in sorted(files) if f.endswith(".py")]
    return out


# ---------------------------------------------------------------------------- the runs


def run_encode(tokenizer_file: str, fast: bool, stdlib: str) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(tokenizer_file)
    encode = tok.encode_batch_fast if fast else tok.encode_batch
    texts, tokens = [], 0
    for path in stdlib_files(stdlib):
        try:
            texts.append(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, ValueError):
            continue
        if len(texts) == 256:
            tokens += sum(len(e.ids) for e in encode(texts, add_special_tokens=False))
            texts = []
    tokens += sum(len(e.ids) for e in encode(texts, add_special_tokens=False))
    print(json.dumps({"tokens": tokens}))


def run_prepare(out: str, vocab: int, workers: int, tokenizer_path: str | None, stdlib: str) -> None:
    from rung_pretrain import prepare

    tokenizer = {"name": "bpe", "vocab_size": vocab}
    if tokenizer_path:
        tokenizer["path"] = tokenizer_path
    config = {
        "output_dir": out,
        "backend": {"name": "torch"},
        "tokenizer": tokenizer,
        "data": {"name": "corpus", "sources": [{"name": "stdlib", "path": stdlib}], "workers": workers,
                 "clean": {"minhash": {"n_grams": 5}}, "shards": {"dir": out + "/data"}},
    }
    data = prepare(config, force=True, progress=False)
    m = data.manifest
    print(
        json.dumps(
            {
                "tokens": m["splits"]["train"]["tokens"] + m["splits"]["validation"]["tokens"],
                "documents": m["documents"],
                "clean_mb": m["bytes"] / 1e6,
                "removed": {
                    e["step"]: {k: v["docs"] for k, v in e["removed"].items()} for e in m["report"] if e["removed"]
                },
            }
        )
    )


# ---------------------------------------------------------------------------- measuring


def tree_memory(pid: int) -> int:
    """Memory of a process and all its descendants: the sum of their PSS (proportional set
    size: a page shared by n forked processes counts 1/n in each), RSS where PSS is unknown."""
    import psutil

    try:
        proc = psutil.Process(pid)
        procs = [proc] + proc.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        try:
            try:
                total += p.memory_full_info().pss
            except (AttributeError, psutil.AccessDenied):
                total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def measure(args: list[str]) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_memory(proc.pid))
        time.sleep(0.05)
    wall = time.perf_counter() - start
    out = proc.stdout.read()
    if proc.returncode:
        raise SystemExit(f"{args[0]} failed ({proc.returncode})")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall": wall, "cpu": cpu, "peak": peak, **json.loads(out.strip().splitlines()[-1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--workers", type=int, default=0, help="0: all cores")
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--tokenizer", help=argparse.SUPPRESS)
    parser.add_argument("--stdlib", default=STDLIB, help="the corpus: this folder's .py files (default: the stdlib)")
    args = parse_args(parser, SMOKE)
    if args.phase in ("encode", "encode_fast"):
        return run_encode(args.tokenizer, fast=args.phase == "encode_fast", stdlib=args.stdlib)
    if args.phase == "prepare":
        return run_prepare(args.out, args.vocab, args.workers, args.tokenizer, args.stdlib)

    corpus_mb = sum(p.stat().st_size for p in stdlib_files(args.stdlib)) / 1e6
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"stdlib corpus: {len(stdlib_files(args.stdlib))} files, {corpus_mb:.1f} MB; {cores} cores; "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        common = ["--vocab", str(args.vocab), "--workers", str(args.workers), "--stdlib", args.stdlib]
        full = measure(["--phase", "prepare", "--out", f"{tmp}/full", *common])
        tokenizer = f"{tmp}/full/data/tokenizer/tokenizer.json"
        shards = measure(["--phase", "prepare", "--out", f"{tmp}/shards", "--tokenizer", tokenizer, *common])
        encode = measure(["--phase", "encode", "--tokenizer", tokenizer, "--stdlib", args.stdlib])
        encode_fast = measure(["--phase", "encode_fast", "--tokenizer", tokenizer, "--stdlib", args.stdlib])
    print(f"\n{'run':8} {'wall s':>8} {'CPU s':>8} {'MB/s':>7} {'peak MiB':>9} {'tokens':>11} {'wall / encode':>14}")
    for name, r in (("encode", encode), ("enc_fast", encode_fast), ("full", full), ("shards", shards)):
        print(f"{name:8} {r['wall']:8.1f} {r['cpu']:8.1f} {corpus_mb / r['wall']:7.2f} {r['peak'] / 2**20:9.0f} "
              f"{r['tokens']:11,} {r['wall'] / encode['wall']:14.2f}")
    print(f"\nfull: {full['documents']:,} documents / {full['clean_mb']:.1f} MB after cleaning; removed: "
          f"{full['removed']}")
    print(f"peak memory of all processes while preparing: {full['peak'] / 2**20:.0f} MiB (aim < 1024)")


if __name__ == "__main__":
    main()

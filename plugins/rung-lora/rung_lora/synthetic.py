"""Synthetic instruction tasks with checkable answers, written as chat JSONL.

    python -m rung_lora.synthetic arithmetic --out data/arith --train 4000 --eval 200
    python -m rung_lora.synthetic reverse --out data/reverse

writes `train.jsonl` and `eval.jsonl` (disjoint questions) in the `chat_jsonl` format:
{"messages": [{"role": "user", "content": "12+34="}, {"role": "assistant", "content": "46"}]}
"""

from __future__ import annotations

import argparse
import json
import random
import string
from collections.abc import Callable, Iterator
from pathlib import Path

Pair = tuple[str, str]


def arithmetic(rng: random.Random, digits: int = 2, ops: str = "+") -> Pair:
    """`a+b=` with operands of up to `digits` digits; the answer is the exact integer."""
    high = 10 ** digits - 1
    a, b, op = rng.randint(0, high), rng.randint(0, high), rng.choice(ops)
    if op == "-" and b > a:
        a, b = b, a
    value = {"+": a + b, "-": a - b, "*": a * b}[op]
    return f"{a}{op}{b}=", str(value)


def reverse(rng: random.Random, min_len: int = 3, max_len: int = 6) -> Pair:
    """Reverse a random lowercase word."""
    word = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(min_len, max_len)))
    return f"reverse {word}", word[::-1]


TASKS: dict[str, Callable[..., Pair]] = {"arithmetic": arithmetic, "reverse": reverse}


def examples(task: str, count: int, seed: int = 0, exclude: set[str] | None = None,
             system: str | None = None, **params: object) -> Iterator[dict]:
    """`count` distinct chat records of `task` whose questions are not in `exclude`."""
    make = TASKS[task]
    rng = random.Random(seed)
    seen = set(exclude or ())
    made = tries = 0
    while made < count:
        tries += 1
        if tries > 50 * count + 1000:
            raise ValueError(f"{task}: cannot make {count} distinct questions with {params}")
        question, answer = make(rng, **params)
        if question in seen:
            continue
        seen.add(question)
        made += 1
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        yield {"messages": messages}


def write_task(task: str, out: str | Path, train: int = 4000, eval: int = 200, seed: int = 0,
               system: str | None = None, **params: object) -> tuple[Path, Path]:
    """Write out/train.jsonl and out/eval.jsonl (held-out questions never in train)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    held = list(examples(task, eval, seed=seed + 1, system=system, **params))
    questions = {r["messages"][-2]["content"] for r in held}
    paths = out / "train.jsonl", out / "eval.jsonl"
    rows = examples(task, train, seed=seed, exclude=questions, system=system, **params)
    for path, records in zip(paths, (rows, held)):
        with path.open("w", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record) + "\n")
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("task", choices=sorted(TASKS))
    parser.add_argument("--out", required=True, help="folder for train.jsonl and eval.jsonl")
    parser.add_argument("--train", type=int, default=4000)
    parser.add_argument("--eval", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--digits", type=int, default=2, help="arithmetic: digits per operand")
    parser.add_argument("--ops", default="+", help="arithmetic: operators to draw from, e.g. +-")
    args = parser.parse_args(argv)
    params = {"digits": args.digits, "ops": args.ops} if args.task == "arithmetic" else {}
    train, held = write_task(args.task, args.out, args.train, args.eval, args.seed, **params)
    print(f"wrote {train} ({args.train} examples) and {held} ({args.eval} held out)")


if __name__ == "__main__":
    main()

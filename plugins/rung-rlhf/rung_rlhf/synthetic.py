"""Feedback data for a task with checkable answers: the Level 2 ladder's worked example.

    python -m rung_rlhf.synthetic arithmetic --out runs/arith-feedback

writes, from rung_lora's synthetic tasks (held-out questions never in the training files):

- `preferences.jsonl`, `preferences_eval.jsonl`: {"prompt", "chosen", "rejected"} pairs whose
  chosen answer is right and whose rejected answer is a near miss (off by one or ten, two
  digits swapped, a digit dropped): what a reward model and DPO learn from;
- `prompts.jsonl`, `prompts_eval.jsonl`: {"prompt", "reference"}: what GRPO and PPO sample
  answers to, scored by a verifiable reward (exact_match against the reference).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from rung_lora.synthetic import examples


def near_miss(answer: str, rng: random.Random) -> str:
    """A wrong answer that looks like the right one."""
    for _ in range(20):
        value = int(answer)
        kind = rng.choice(["one", "ten", "swap", "drop"])
        if kind == "one":
            wrong = str(value + rng.choice([-1, 1]))
        elif kind == "ten":
            wrong = str(value + rng.choice([-10, 10]))
        elif kind == "swap" and len(answer) > 1:
            i = rng.randrange(len(answer) - 1)
            wrong = answer[:i] + answer[i + 1] + answer[i] + answer[i + 2:]
        else:
            wrong = answer[:-1] if len(answer) > 1 else str(value + 2)
        if wrong != answer and not wrong.startswith("-") and (wrong == "0" or not wrong.startswith("0")):
            return wrong
    return str(int(answer) + 1)


def write(out: str | Path, train: int = 2000, eval: int = 100, seed: int = 0, **params: object) -> dict[str, Path]:
    """Write the four files to `out`; their paths by name."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    held = list(examples("arithmetic", eval, seed=seed + 1, **params))
    questions = {r["messages"][-2]["content"] for r in held}
    rows = list(examples("arithmetic", train, seed=seed, exclude=questions, **params))
    paths = {}
    for name, records in (("", rows), ("_eval", held)):
        pairs = [(r["messages"][-2]["content"], r["messages"][-1]["content"]) for r in records]
        paths[f"preferences{name}"] = out / f"preferences{name}.jsonl"
        paths[f"prompts{name}"] = out / f"prompts{name}.jsonl"
        with paths[f"preferences{name}"].open("w", encoding="utf-8") as handle:
            for question, answer in pairs:
                handle.write(json.dumps({"prompt": question, "chosen": answer,
                                         "rejected": near_miss(answer, rng)}) + "\n")
        with paths[f"prompts{name}"].open("w", encoding="utf-8") as handle:
            for question, answer in pairs:
                handle.write(json.dumps({"prompt": question, "reference": answer}) + "\n")
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("task", choices=["arithmetic"])
    parser.add_argument("--out", required=True)
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--eval", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--digits", type=int, default=2)
    parser.add_argument("--ops", default="+")
    args = parser.parse_args(argv)
    paths = write(args.out, args.train, args.eval, args.seed, digits=args.digits, ops=args.ops)
    print("wrote " + ", ".join(str(p) for p in paths.values()))


if __name__ == "__main__":
    main()

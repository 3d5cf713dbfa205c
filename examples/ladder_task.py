"""The ladder's synthetic instruction task: say a small Python expression in words, get the expression.

    python examples/ladder_task.py --out runs/seed-ladder/data

    user:      subtract offset from total
    assistant: total - offset

A task for a model pretrained on Python source: its answers are Python that the model has read
(names, operators, calls, subscripts), so fine-tuning teaches a mapping from words onto what it
knows, not new symbols; 2-digit arithmetic suits such a model badly, as its BPE merges some digit
pairs and not others. Each instruction is one of a few phrasings (`PHRASES`) of two names drawn
from identifiers common in the standard library; the held-out instructions are (phrase, names)
combinations that no training file holds. Writes into `--out`:

- `task/train.jsonl`, `task/eval.jsonl`: chat examples (`messages`), for sft; with `--replay N`,
  the training file also holds N short pieces of the standard library's own source, each an
  assistant turn alone (rehearsal: fine-tuning on the task alone makes the model forget Python);
- `pairs/preferences.jsonl`, `pairs/preferences_eval.jsonl`: {"prompt", "chosen", "rejected"},
  the right expression chosen over a near miss (operands swapped, a confusable operator, a wrong
  name), for DPO;
- `eval/choice.jsonl`: {"question", "choices", "answer"}: the right expression among three near
  misses (chance 0.25), scored by log-likelihood;
- `eval/generate.jsonl`: {"prompt", "reference"}: generated and scored by exact match.

Everything comes from `--seed`: the same arguments write the same files.
"""

from __future__ import annotations

import argparse
import json
import random
import sysconfig
from pathlib import Path

#: Operand names: identifiers the standard library uses often.
NAMES = ("x", "y", "n", "i", "count", "total", "value", "index", "size", "name", "key", "items", "data",
         "result", "line", "text", "offset", "start", "end", "width", "left", "right", "path", "node", "args",
         "obj", "limit", "step", "level", "base")

#: (instruction, expression, confusable expressions): {a} and {b} are the two names.
PHRASES = (
    ("add {a} and {b}", "{a} + {b}", ("{a} - {b}", "{a} * {b}")),
    ("subtract {b} from {a}", "{a} - {b}", ("{a} + {b}", "{a} // {b}")),
    ("multiply {a} by {b}", "{a} * {b}", ("{a} ** {b}", "{a} + {b}")),
    ("divide {a} by {b}", "{a} / {b}", ("{a} // {b}", "{a} % {b}")),
    ("floor-divide {a} by {b}", "{a} // {b}", ("{a} / {b}", "{a} % {b}")),
    ("{a} modulo {b}", "{a} % {b}", ("{a} // {b}", "{a} / {b}")),
    ("raise {a} to the power {b}", "{a} ** {b}", ("{a} * {b}", "{a} ^ {b}")),
    ("is {a} equal to {b}", "{a} == {b}", ("{a} != {b}", "{a} is {b}")),
    ("is {a} not equal to {b}", "{a} != {b}", ("{a} == {b}", "{a} is not {b}")),
    ("is {a} less than {b}", "{a} < {b}", ("{a} > {b}", "{a} <= {b}")),
    ("is {a} greater than {b}", "{a} > {b}", ("{a} < {b}", "{a} >= {b}")),
    ("is {a} in {b}", "{a} in {b}", ("{a} not in {b}", "{a} == {b}")),
    ("call {a} with {b}", "{a}({b})", ("{b}({a})", "{a}[{b}]")),
    ("item {b} of {a}", "{a}[{b}]", ("{b}[{a}]", "{a}({b})")),
    ("attribute {b} of {a}", "{a}.{b}", ("{b}.{a}", "{a}[{b}]")),
    ("the larger of {a} and {b}", "max({a}, {b})", ("min({a}, {b})", "max({a})")),
    ("the smaller of {a} and {b}", "min({a}, {b})", ("max({a}, {b})", "min({b})")),
    ("the length of {a} plus {b}", "len({a}) + {b}", ("len({a} + {b})", "len({b}) + {a}")),
)


def combinations() -> list[tuple[int, str, str]]:
    """Every (phrase, first name, second name) with two different names."""
    return [(p, a, b) for p in range(len(PHRASES)) for a in NAMES for b in NAMES if a != b]


def near_misses(phrase: int, a: str, b: str, rng: random.Random) -> list[str]:
    """Three wrong expressions that look like the right one: two confusable operators or
    operand orders, and the right form with another name in it."""
    _, right, confusable = PHRASES[phrase]
    wrong = [form.format(a=a, b=b) for form in confusable]
    other = rng.choice([n for n in NAMES if n not in (a, b)])
    wrong.append(right.format(a=a, b=other) if rng.random() < 0.5 else right.format(a=other, b=b))
    answer = right.format(a=a, b=b)
    return [w for w in dict.fromkeys(wrong) if w != answer]


def replay_pieces(count: int, chars: int, rng: random.Random) -> list[str]:
    """`count` pieces of the standard library's source (test suites left out, as the ladder's
    corpus leaves them out), each up to `chars` long and starting at a line."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if not {"test", "tests", "idlelib", "site-packages"} & set(
        p.relative_to(root).parts[:-1]))
    pieces: list[str] = []
    while len(pieces) < count and files:
        try:
            lines = rng.choice(files).read_text(encoding="utf-8").splitlines(keepends=True)
        except (OSError, UnicodeDecodeError):
            continue
        if not lines:
            continue
        start, piece = rng.randrange(len(lines)), ""
        for line in lines[start:]:
            if len(piece) + len(line) > chars:
                break
            piece += line
        if piece.strip():
            pieces.append(piece)
    return pieces


def write(out: str | Path, train: int = 5000, eval: int = 200, seed: int = 0, replay: int = 0,
          replay_chars: int = 300) -> dict[str, Path]:
    """Write the task's files under `out`; their paths by name."""
    out = Path(out)
    rng = random.Random(seed)
    pool = combinations()
    rng.shuffle(pool)
    if train + eval > len(pool):
        raise SystemExit(f"--train {train} + --eval {eval}: the task has only {len(pool)} instructions")
    held, trained = pool[:eval], pool[eval:eval + train]
    paths = {name: out / name for name in ("task/train.jsonl", "task/eval.jsonl", "pairs/preferences.jsonl",
                                           "pairs/preferences_eval.jsonl", "eval/choice.jsonl",
                                           "eval/generate.jsonl")}
    for path in paths.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[dict]] = {name: [] for name in paths}
    for split, items in (("train", trained), ("eval", held)):
        for phrase, a, b in items:
            words, form, _ = PHRASES[phrase]
            question, answer = words.format(a=a, b=b), form.format(a=a, b=b)
            wrong = near_misses(phrase, a, b, rng)
            rows[f"task/{split}.jsonl"].append({"messages": [{"role": "user", "content": question},
                                                            {"role": "assistant", "content": answer}]})
            pairs = "pairs/preferences.jsonl" if split == "train" else "pairs/preferences_eval.jsonl"
            rows[pairs].append({"prompt": question, "chosen": answer, "rejected": rng.choice(wrong)})
            if split == "eval":
                choices = [answer, *rng.sample(wrong, 3)]
                rng.shuffle(choices)
                rows["eval/choice.jsonl"].append({"question": question, "choices": choices,
                                                  "answer": choices.index(answer)})
                rows["eval/generate.jsonl"].append({"prompt": question, "reference": answer})
    if replay:
        rows["task/train.jsonl"] += [{"messages": [{"role": "assistant", "content": piece}]}
                                     for piece in replay_pieces(replay, replay_chars, rng)]
        rng.shuffle(rows["task/train.jsonl"])
    for name, path in paths.items():
        with path.open("w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in rows[name])
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder to write task/, pairs/ and eval/ into")
    parser.add_argument("--train", type=int, default=5000, help="training instructions")
    parser.add_argument("--eval", type=int, default=200, help="held-out instructions")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--replay", type=int, default=0, help="pieces of stdlib source added to the training file")
    parser.add_argument("--replay-chars", type=int, default=300, help="longest piece of source, in characters")
    args = parser.parse_args(argv)
    for name, path in write(args.out, args.train, args.eval, args.seed, args.replay, args.replay_chars).items():
        print(f"{name}: {sum(1 for _ in path.open(encoding='utf-8'))} lines -> {path}")


if __name__ == "__main__":
    main()

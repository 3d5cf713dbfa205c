"""Score every model of the Level 2 ladder the same way and print one table.

    .venv/bin/python examples/ladder/evaluate.py --prompts runs/arith-feedback/prompts_eval.jsonl \
        sft=runs/ladder/sft/model dpo=runs/ladder/dpo/model grpo=runs/ladder/grpo/model ...

Each NAME=FOLDER is a saved causal model (an `sft`, `dpo`, `grpo` or `ppo` run's `model`
folder, with its tokenizer and chat template). Every one answers the same held-out prompts
greedily (temperature 0, at most `--max-new-tokens`) through `rung.backend("torch", ...)`'s
`generate_batch`, the prompt rendered with the chat template saved beside the model, and each
answer is scored with rung's registered `exact_match` reward function against the reference:
the same measurement for the base and for every model trained from it, whatever metrics the
trainers log themselves.

With `--reward-model FOLDER` (a `reward` run's `model`), each model's answers are also scored
by that reward model (its mean score: what PPO maximises), and the reward model's own pairwise
accuracy on `--pairs` (held-out preference pairs) is printed.

Beside a model folder, its run's `metrics.jsonl` says more: for a `grpo` or `ppo` run, the
mean reward of its sampled training batches (`reward_mean`, logged once per sampled batch when
`log_every` is `num_iterations`), first quarter of the run against the last; for the reward
model, its held-out pairwise accuracy (`eval_accuracy`) before and after training.

With `--json PATH` the figures are also written as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

import rung
from rung.interfaces import GenerationRequest
from rung.records import Message
from rung.transformers_tokenizer import as_rung_tokenizer

from rung_lora.rewards import ExactMatch
from rung_lora.templates import make_renderer


def read_jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def load(folder: str) -> tuple[object, object, object]:
    """(backend, rung tokenizer, renderer) of a saved model folder, on the CPU in fp32."""
    backend = rung.backend("torch", model=folder, device="cpu", precision="fp32")
    tokenizer = as_rung_tokenizer(backend.tokenizer)
    return backend, tokenizer, make_renderer("auto", tokenizer)


def answers(folder: str, prompts: list[str], max_new_tokens: int) -> list[str]:
    """Greedy answers of the model in `folder` to each prompt (a user turn)."""
    backend, _, renderer = load(folder)
    requests = [GenerationRequest(prompt=renderer([Message("user", p)], add_generation_prompt=True), raw=True,
                                  max_tokens=max_new_tokens, temperature=0.0, stop=renderer.stop)
                for p in prompts]
    return [c.text for c in backend.generate_batch(requests, max_concurrency=64)]


class RewardModel:
    """A `reward` run's score head, read at the last token of prompt + answer (as grpo/ppo read it)."""

    def __init__(self, folder: str) -> None:
        from rung_rlhf.formatting import Formatter

        self.backend, tokenizer, renderer = load(folder)
        self.formatter = Formatter(renderer, tokenizer)
        from rung import objectives
        from rung.plugins import get_plugins

        self.token_scores = objectives.load(get_plugins().registry, "token_scores", self.backend.framework)
        self.pad = next((t for t in (tokenizer.pad_id, tokenizer.eos_id) if t is not None), 0)

    def __call__(self, prompts: list[str], texts: list[str]) -> np.ndarray:
        from rung_rlhf.rollouts import RewardModelScorer

        width = max(len(sum(self.formatter.split([Message("user", p)], t), [])) for p, t in zip(prompts, texts))
        scorer = RewardModelScorer(self.backend.model, self.token_scores, self.formatter, self.pad, width)
        return scorer([[Message("user", p)] for p in prompts], texts)


def logged(folder: str) -> list[dict]:
    """The metrics its run logged, from the run folder above a saved model folder ([] if none)."""
    path = Path(folder).parent / "metrics.jsonl"
    return read_jsonl(str(path)) if path.is_file() else []


def sampled_reward(folder: str) -> tuple[float, float] | None:
    """Mean `reward_mean` of the first and of the last quarter of the run's logged batches."""
    rewards = [row["reward_mean"] for row in logged(folder) if "reward_mean" in row]
    if len(rewards) < 4:
        return None
    quarter = len(rewards) // 4
    return float(np.mean(rewards[:quarter])), float(np.mean(rewards[-quarter:]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", metavar="NAME=FOLDER")
    parser.add_argument("--prompts", required=True, help="held-out prompts with references (JSONL)")
    parser.add_argument("--max-new-tokens", type=int, default=6)
    parser.add_argument("--reward-model", help="a reward run's model folder: also score the answers with it")
    parser.add_argument("--pairs", help="held-out preference pairs: the reward model's pairwise accuracy")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)

    held = read_jsonl(args.prompts)
    prompts, references = [r["prompt"] for r in held], [str(r["reference"]) for r in held]
    exact = ExactMatch()
    reward_model = RewardModel(args.reward_model) if args.reward_model else None
    figures: dict[str, dict[str, float]] = {}
    for spec in args.models:
        name, _, folder = spec.partition("=")
        if not folder or not Path(folder).is_dir():
            sys.exit(f"{spec}: give NAME=FOLDER with a saved model folder")
        texts = answers(folder, prompts, args.max_new_tokens)
        row = {"exact_match": float(np.mean([exact(t, r) for t, r in zip(texts, references)]))}
        if reward_model is not None:
            row["reward_model"] = float(np.mean(reward_model(prompts, texts)))
        curve = sampled_reward(folder)
        if curve is not None:
            row["sampled_reward_first_quarter"], row["sampled_reward_last_quarter"] = curve
        figures[name] = row

    print(f"held-out prompts: {len(prompts)} ({args.prompts}), greedy, exact match against the reference")
    width = max(len(name) for name in figures) + 1
    header = f"{'model':<{width}} {'exact match':>12}" + (f" {'mean RM score':>14}" if reward_model else "")
    header += "   sampled training reward (first -> last quarter)"
    print(header)
    print("-" * len(header))
    for name, row in figures.items():
        line = f"{name:<{width}} {row['exact_match']:>12.3f}"
        if reward_model is not None:
            line += f" {row['reward_model']:>14.3f}"
        if "sampled_reward_first_quarter" in row:
            line += f"   {row['sampled_reward_first_quarter']:.3f} -> {row['sampled_reward_last_quarter']:.3f}"
        print(line)
    if reward_model is not None and args.pairs:
        pairs = read_jsonl(args.pairs)
        chosen = reward_model([p["prompt"] for p in pairs], [p["chosen"] for p in pairs])
        rejected = reward_model([p["prompt"] for p in pairs], [p["rejected"] for p in pairs])
        accuracy = float(np.mean(chosen > rejected))
        figures["reward_model_pairs"] = {"pairwise_accuracy": accuracy, "pairs": float(len(pairs))}
        logs = [row["eval_accuracy"] for row in logged(args.reward_model) if "eval_accuracy" in row]
        before = f" (its run logged {logs[0]:.3f} before training, {logs[-1]:.3f} after)" if logs else ""
        print(f"reward model: pairwise accuracy {accuracy:.3f} on {len(pairs)} held-out pairs{before}; chance 0.5")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

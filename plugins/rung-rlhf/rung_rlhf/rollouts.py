"""Rollouts: completions sampled from the policy being trained, scored, packed into fixed batches.

`RolloutStream` is a `rung.interfaces.RolloutStream`: the loop calls `next_from(policy)`
inside the engine's evaluation context (current weights, eval mode, no gradients) once per
micro-batch. A call that needs new completions takes the next `batch_size` prompts (an endless,
seeded order, the same after a resume), samples `group_size` completions of each through the
framework's `sample_tokens` (batched KV-cache sampling), decodes them (a completion ends at a
stop id or at the chat template's end-of-turn text), scores them (`Rewarder`: registered reward
functions and/or a reward model's score head at the last token), packs them
(`rung_rlhf.packing`: a prompt and its completions in one row, or a row each), and computes
what the loss needs from the sampling-time policy once: `old_logprobs`, or what the trainer's
`old_arrays` gives instead (PPO's values too; nothing for grpo with one iteration, whose loss
detaches its own log-probs), and the reference's `ref_logprobs` with a KL term. The
trainer's `finish` adds its advantages. One sampled batch serves `num_iterations` optimizer
steps (PPO epochs, GRPO's mu): with gradient accumulation the stream samples the A
micro-batches of one step, then hands the same A again for each further iteration.

Rows: layout `shared` puts a prompt and as many of its G completions as fit `max_length`
after the longest prompt in one row (all G when they fit; else the fewest rows per prompt,
the completions spread evenly over them), each completion seeing the prompt and itself;
`separate` (and a shared row of one) is a prompt and one completion in plain causal rows.
Every row is as long as the most it can hold (the longest prompt and its share of completions
at `max_completion_length`; never longer than `max_length`), so every array has a fixed shape
per run (per-completion arrays [N]), as the jax engine compiles its step once. Per-token
arrays are aligned with a `labels`-convention objective's output [R, T - 1]. Per-completion
arrays (`rewards`, `reward/<name>`, `completion_length`, `finished`) let the loss report the
batch's rewards as its metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rung.decoding import Sampling
from rung.errors import ConfigError, RungError
from rung.records import Message, RewardedPrompt

from rung_rlhf.packing import Packed, pack_shared


def to_numpy(value: Any) -> np.ndarray:
    """A framework array (torch on any device, jax) as float32 numpy."""
    for step in ("detach", "cpu"):
        if callable(getattr(value, step, None)):
            value = getattr(value, step)()
    if "bfloat16" in str(getattr(value, "dtype", "")) and callable(getattr(value, "float", None)):
        value = value.float()
    return np.asarray(value, dtype=np.float32)


# ---------------------------------------------------------------- decoding


@dataclass
class Completion:
    """One sampled completion: the ids that are trained, its text for rewards, how it ended."""

    ids: list[int]
    text: str
    finished: bool  # ended at a stop id or stop text; False: cut at max_completion_length


def finish_completion(ids: Sequence[int], tokenizer: Any, stop_ids: frozenset[int],
                      stop_text: Sequence[str]) -> Completion:
    """Cut sampled ids where the completion ends: after a stop id (kept: the model learns to
    stop) or after the first stop text (its tokens kept, later tokens dropped, as if sampling
    had stopped there). The text is the answer without the stop."""
    ids = list(ids)
    ended = bool(ids) and ids[-1] in stop_ids
    body = ids[:-1] if ended else ids
    text = tokenizer.decode(body)
    hits = [(text.find(s), s) for s in stop_text if s and s in text]
    if not hits:
        return Completion(ids, text, ended)
    at, stop = min(hits)
    for k in range(1, len(body) + 1):  # the fewest tokens whose text holds the stop
        if stop in tokenizer.decode(body[:k]):
            return Completion(body[:k], text[:at], True)
    return Completion(ids, text[:at], True)


# ---------------------------------------------------------------- rewards


class RewardModelScorer:
    """A reward model's score at the last token of prompt + completion (its own tokenizer and
    formatting, as its `reward` run trained it); `token_scores` is its framework's objective."""

    def __init__(self, model: Any, token_scores: Callable, formatter: Any, pad_id: int, max_length: int,
                 rows: int = 32) -> None:
        self.model, self.token_scores, self.formatter = model, token_scores, formatter
        self.pad_id, self.max_length, self.rows = pad_id, max_length, rows

    def __call__(self, prompts: Sequence[Sequence[Message]], texts: Sequence[str]) -> np.ndarray:
        if callable(getattr(self.model, "eval", None)):
            self.model.eval()
        encoded = []
        for prompt, text in zip(prompts, texts):
            p, c = self.formatter.split(prompt, text)
            encoded.append((p + c)[-self.max_length:])  # keep the end: the score is read there
        scores = []
        for first in range(0, len(encoded), self.rows):
            chunk = encoded[first:first + self.rows]
            ids = np.full((self.rows, self.max_length), self.pad_id, dtype=np.int64)
            for i, row in enumerate(chunk):
                ids[i, :len(row)] = row
            values, _ = self.token_scores(self.model, {"input_ids": ids})
            values = to_numpy(values)
            scores += [float(values[i, len(row) - 1]) for i, row in enumerate(chunk)]
        return np.asarray(scores, dtype=np.float32)


class Rewarder:
    """Scores completions: `fn(completion, reference)` for each reward function, the reward
    model last, summed with `weights` (default 1 each)."""

    def __init__(self, functions: Sequence[tuple[str, Callable[..., float]]],
                 reward_model: RewardModelScorer | None = None, weights: Sequence[float] | None = None) -> None:
        self.functions, self.reward_model = list(functions), reward_model
        self.names = [name for name, _ in self.functions] + (["reward_model"] if reward_model else [])
        if not self.names:
            raise ConfigError("trainer.rewards: give at least one reward function or trainer.reward_model")
        if weights is not None and len(weights) != len(self.names):
            raise ConfigError(f"trainer.reward_weights: {len(weights)} weights for {len(self.names)} rewards "
                              f"({', '.join(self.names)})")
        self.weights = np.asarray(weights if weights is not None else [1.0] * len(self.names), dtype=np.float32)

    def __call__(self, prompts: Sequence[Sequence[Message]], references: Sequence[str | None],
                 texts: Sequence[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        parts: dict[str, np.ndarray] = {}
        for name, fn in self.functions:
            parts[name] = np.asarray([float(fn(t, r)) for t, r in zip(texts, references)], dtype=np.float32)
        if self.reward_model is not None:
            parts["reward_model"] = self.reward_model(prompts, texts)
        total = sum(w * parts[n] for w, n in zip(self.weights, self.names))
        return np.asarray(total, dtype=np.float32), parts


def unique_names(sections: Sequence[Mapping[str, Any]]) -> list[str]:
    """Metric names of reward sections: their `name`, numbered when one is used twice."""
    names = [str(s.get("name", "reward")) for s in sections]
    return [n if names.count(n) == 1 else f"{n}_{i}" for i, n in enumerate(names)]


# ---------------------------------------------------------------- one sampled batch


# Arrays of one value per completion [N] (the rest of a batch is one value, or a row, per row [R]).
PER_COMPLETION = ("rewards", "completion_length", "finished")


@dataclass
class Rollout:
    """One micro-batch's samples: B prompts, G completions each, flat and prompt-major
    (completion i * G + j is prompt i's j-th)."""

    prompts: list[RewardedPrompt]
    prompt_ids: list[list[int]]
    completions: list[Completion]
    rewards: np.ndarray  # [N] the weighted total
    parts: dict[str, np.ndarray]  # [N] each reward
    group_size: int
    packed: Packed | None = None
    token_completion: np.ndarray | None = None  # [R, T - 1]: which completion a predicted token is of, -1 none
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def per_token(self, values: np.ndarray) -> np.ndarray:
        """A per-completion array [N] spread over each completion's predicted tokens [R, T - 1]."""
        tc = self.token_completion
        return np.where(tc >= 0, np.asarray(values)[np.maximum(tc, 0)], 0.0).astype(np.float32)

    def token_counts(self) -> np.ndarray:
        """Each completion's tokens in the batch [N] (after any cut to fit a row)."""
        tc = self.token_completion
        return np.bincount(tc[tc >= 0], minlength=len(self.completions)).astype(np.float32)


class PromptOrder:
    """An endless, seeded order over prompts: position p is epoch p // n's permutation at p % n."""

    def __init__(self, count: int, seed: int, shuffle: bool = True) -> None:
        self.count, self.seed, self.shuffle = count, seed, shuffle
        self._epoch, self._order = -1, np.arange(count)

    def __getitem__(self, position: int) -> int:
        epoch, index = divmod(position, self.count)
        if epoch != self._epoch:
            self._epoch = epoch
            rng = np.random.default_rng([self.seed, epoch])
            self._order = rng.permutation(self.count) if self.shuffle else np.arange(self.count)
        return int(self._order[index])


class RolloutStream:
    """Samples, scores and packs rollouts; see the module docstring for the contract."""

    def __init__(self, prompts: Sequence[RewardedPrompt], prompt_ids: Sequence[list[int]], *,
                 sample_tokens: Callable, token_logprobs: Callable, rewarder: Rewarder, tokenizer: Any,
                 sampling: Sampling, batch_size: int, group_size: int, max_length: int, pad_id: int,
                 layout: str = "shared", num_iterations: int = 1, grad_accum_steps: int = 1, seed: int = 0,
                 shuffle: bool = True, rank: int = 0, world_size: int = 1,
                 reference: Callable[[Any, dict[str, np.ndarray]], np.ndarray] | None = None,
                 old_arrays: Callable[[Any, dict[str, np.ndarray]], dict[str, np.ndarray]] | None = None,
                 finish: Callable[[Rollout], dict[str, np.ndarray]] | None = None) -> None:
        if not prompts:
            raise RungError("no training prompts")
        self.prompts, self.prompt_ids = list(prompts), [list(p) for p in prompt_ids]
        self.sample_tokens, self.token_logprobs, self.rewarder = sample_tokens, token_logprobs, rewarder
        self.tokenizer, self.sampling = tokenizer, sampling
        self.batch_size, self.group_size, self.max_length, self.pad_id = batch_size, group_size, max_length, pad_id
        self.layout, self.num_iterations, self.accum = layout, num_iterations, grad_accum_steps
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.reference, self.old_arrays, self.finish = reference, old_arrays, finish
        self.order = PromptOrder(len(self.prompts), seed, shuffle)
        self.calls = 0  # next_from calls so far: the whole position
        self.cache: dict[int, dict[str, np.ndarray]] = {}  # this cycle's micro-batches, by slot
        self.last: Rollout | None = None
        longest, C = max(len(p) for p in self.prompt_ids), sampling.max_tokens
        fits = (max_length - longest) // C  # completions a row of max_length holds after the longest prompt
        if fits < 1:
            raise ConfigError(
                f"trainer.max_length {max_length} is too short for the longest prompt ({longest} tokens) and a "
                f"completion of up to {C} tokens ({longest + C}); raise max_length, lower max_prompt_length "
                "or max_completion_length")
        self.per_row = 1  # completions of one prompt in one row: as many as fit, spread evenly over its rows
        if layout == "shared":
            rows_per_prompt = -(-group_size // min(fits, group_size))
            self.per_row = -(-group_size // rows_per_prompt)
        self.row_length = longest + self.per_row * C  # the most a row can hold; no wider than max_length

    # -- the RolloutStream protocol

    def next_from(self, policy: Any) -> dict[str, np.ndarray]:
        cycle, within = divmod(self.calls, self.accum * self.num_iterations)
        iteration, slot = divmod(within, self.accum)
        self.calls += 1
        if iteration == 0 or slot not in self.cache:  # (a resumed run samples its cycle afresh)
            if iteration == 0 and slot == 0:
                self.cache = {}
            self.cache[slot] = self.sample(policy, cycle * self.accum + slot)
        return self.cache[slot]

    def __iter__(self) -> "RolloutStream":
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        raise RungError("a RolloutStream samples from the policy: the loop calls next_from(model)")

    def state_dict(self) -> dict[str, Any]:
        return {"calls": self.calls, "prompts": len(self.prompts)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if int(state.get("prompts", len(self.prompts))) != len(self.prompts):
            raise RungError(f"the checkpoint's data had {state['prompts']} prompts, this run's has "
                            f"{len(self.prompts)}: resume with the same data")
        self.calls, self.cache = int(state["calls"]), {}

    # -- sampling

    def indices(self, batch_index: int) -> list[int]:
        """The prompts of micro-batch `batch_index` on this rank."""
        width = self.batch_size * self.world_size
        start = batch_index * width + self.rank * self.batch_size
        return [self.order[p] for p in range(start, start + self.batch_size)]

    def seed_of(self, batch_index: int) -> int:
        return int(np.random.default_rng([self.seed, 1, batch_index, self.rank]).integers(2**31 - 1))

    def rollout(self, policy: Any, batch_index: int) -> Rollout:
        """Sample and score the completions of micro-batch `batch_index` (no packing)."""
        chosen = self.indices(batch_index)
        prompts = [self.prompts[i] for i in chosen]
        ids = [self.prompt_ids[i] for i in chosen]
        G = self.group_size
        sampling = Sampling(**{**self.sampling.__dict__, "seed": self.seed_of(batch_index)})
        rows = [p for p in ids for _ in range(G)]
        sampled = self.sample_tokens(policy, rows, sampling)
        completions = [finish_completion(s[: sampling.max_tokens], self.tokenizer, sampling.stop_ids, sampling.stop)
                       for s in sampled]
        for c in completions:
            if not c.ids:  # an empty completion has nothing to train; one stop id stands for it
                c.ids = [next(iter(sampling.stop_ids), self.pad_id)]
        rewards, parts = self.rewarder([p.prompt for p in prompts for _ in range(G)],
                                       [p.reference for p in prompts for _ in range(G)],
                                       [c.text for c in completions])
        return Rollout(prompts, ids, completions, rewards, parts, G)

    def sample(self, policy: Any, batch_index: int) -> dict[str, np.ndarray]:
        """One micro-batch: sampled, scored, packed, with the sampling-time log-probs."""
        rollout = self.rollout(policy, batch_index)
        G, k = self.group_size, self.per_row
        row_prompts, row_completions, firsts = [], [], []  # a prompt and k of its completions a row
        for i, prompt in enumerate(rollout.prompt_ids):
            for first in range(i * G, (i + 1) * G, k):
                row_prompts.append(prompt)
                row_completions.append([c.ids for c in rollout.completions[first:min(first + k, (i + 1) * G)]])
                firsts.append(first)
        packed = pack_shared(row_prompts, row_completions, self.row_length, self.pad_id)
        rollout.packed = packed
        segments = packed.prediction_segments
        base = np.asarray(firsts)[:, None] - 1
        rollout.token_completion = np.where(segments > 0, base + segments, -1)
        batch = packed.batch()
        if k == 1:
            batch.pop("segment_ids")  # one completion a row: plain causal attention, no shared-prompt mask
        if self.old_arrays is not None:
            arrays = self.old_arrays(policy, batch)
        else:
            arrays = {"old_logprobs": to_numpy(self.token_logprobs(policy, batch)[0])}
        if self.reference is not None:
            arrays["ref_logprobs"] = self.reference(policy, batch)
        rollout.arrays = arrays
        out = {**batch, **arrays,
               "rewards": rollout.rewards,
               "completion_length": np.asarray([len(c.ids) for c in rollout.completions], dtype=np.float32),
               "finished": np.asarray([c.finished for c in rollout.completions], dtype=np.float32),
               **{f"reward/{name}": part for name, part in rollout.parts.items()}}
        if self.finish is not None:
            out.update(self.finish(rollout))
        keep = out.pop("keep_rows", None)
        if keep is not None:  # rows the trainer leaves out (grpo: their loss is exactly 0)
            out = {k: v if k in PER_COMPLETION or k.startswith("reward/") else v[keep] for k, v in out.items()}
            out["rows_trained"] = np.asarray([keep.mean()], dtype=np.float32)
        self.last = rollout
        return out


# ---------------------------------------------------------------- held-out evaluation


class RewardEvaluator:
    """`evaluate(model)`: greedy answers to held-out prompts, scored by the run's rewards:
    eval_reward (the weighted total) and eval_reward_<name> per reward."""

    def __init__(self, prompts: Sequence[RewardedPrompt], prompt_ids: Sequence[list[int]], *,
                 sample_tokens: Callable, rewarder: Rewarder, tokenizer: Any, sampling: Sampling,
                 rows: int = 32) -> None:
        self.prompts, self.prompt_ids = list(prompts), [list(p) for p in prompt_ids]
        self.sample_tokens, self.rewarder, self.tokenizer = sample_tokens, rewarder, tokenizer
        self.sampling = Sampling(**{**sampling.__dict__, "temperature": 0.0, "top_k": None, "top_p": None,
                                    "seed": 0})
        self.rows = rows
        self.last_texts: list[str] = []

    def __call__(self, model: Any) -> dict[str, float]:
        texts: list[str] = []
        for first in range(0, len(self.prompt_ids), self.rows):
            sampled = self.sample_tokens(model, self.prompt_ids[first:first + self.rows], self.sampling)
            texts += [finish_completion(s[: self.sampling.max_tokens], self.tokenizer, self.sampling.stop_ids,
                                        self.sampling.stop).text for s in sampled]
        self.last_texts = texts
        total, parts = self.rewarder([p.prompt for p in self.prompts], [p.reference for p in self.prompts], texts)
        out = {"eval_reward": float(np.mean(total))}
        if len(parts) > 1 or "reward_model" in parts:
            out.update({f"eval_reward_{name}": float(np.mean(v)) for name, v in parts.items()})
        return out

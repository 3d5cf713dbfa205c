"""The `dpo` trainer: direct preference optimisation (Rafailov et al. 2023) and its IPO and hinge
variants, against the model as it was before training.

The loss is written once with `rung_rlhf.ops` over the framework's `token_logprobs`, so it
runs on torch and jax alike. With d = (log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l))
(summed over each answer's tokens), as TRL's DPOTrainer defines them:

- sigmoid: -log sigmoid(beta d); with label smoothing e (conservative DPO, cDPO):
  -(1 - e) log sigmoid(beta d) - e log sigmoid(-beta d);
- hinge:   max(0, 1 - beta d);
- ipo:     (d' - 1 / (2 beta))^2, d' the same difference with each log-ratio divided by its
  answer's token count (TRL's length normalisation, confirmed with the IPO authors).

The reference log-probabilities come from `rung_rlhf.reference` (computed once before
training, cached on disk). Logged with every step (objective metrics): rewards/chosen and
rewards/rejected (beta times each answer's log-ratio), rewards/margins, rewards/accuracies
(chosen reward above rejected), logps/chosen, logps/rejected, and kl: the mean log-ratio
log pi(y) - log ref(y) of the batch's answers, an estimate of how far the policy has moved
on the data's answers (they are not the policy's own samples, so not the exact KL). Held-out
pairs give the same numbers with an `eval_` prefix (`eval_loss` the loss).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from rung.context import RunContext

from rung_lora.saving import save_tokenizer
from rung_rlhf import ops
from rung_rlhf.pairs import data_key, fixed_batches
from rung_rlhf.preference_options import DPOOptions
from rung_rlhf.preference_trainer import PreferenceTrainer, mean_metrics
from rung_rlhf.reference import ReferenceCache, answer_logprobs, compute, model_inputs, model_key, reference_logprobs


def dpo_loss(chosen: Any, rejected: Any, ref_chosen: Any, ref_rejected: Any, *, beta: float,
             loss_type: str = "sigmoid", label_smoothing: float = 0.0, chosen_tokens: Any = None,
             rejected_tokens: Any = None) -> tuple[Any, dict[str, Any]]:
    """The mean DPO loss of a batch of pairs [P] and its metrics (framework scalars)."""
    xp = ops.namespace(chosen)
    chosen_ratio, rejected_ratio = chosen - ref_chosen, rejected - ref_rejected
    delta = chosen_ratio - rejected_ratio
    if loss_type == "sigmoid":
        losses = -(1 - label_smoothing) * ops.logsigmoid(beta * delta) - label_smoothing * ops.logsigmoid(-beta * delta)
    elif loss_type == "hinge":
        losses = xp.maximum(1 - beta * delta, xp.zeros_like(delta))
    elif loss_type == "ipo":
        one = xp.ones_like(chosen)
        per_token = chosen_ratio / xp.maximum(chosen_tokens, one) - rejected_ratio / xp.maximum(rejected_tokens, one)
        losses = (per_token - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown DPO loss type {loss_type!r}")
    chosen_reward, rejected_reward = beta * chosen_ratio, beta * rejected_ratio
    metrics = {
        "rewards/chosen": xp.mean(chosen_reward),
        "rewards/rejected": xp.mean(rejected_reward),
        "rewards/margins": xp.mean(chosen_reward - rejected_reward),
        "rewards/accuracies": xp.mean(xp.astype(chosen_reward > rejected_reward, chosen.dtype)),
        "logps/chosen": xp.mean(chosen),
        "logps/rejected": xp.mean(rejected),
        "kl": (xp.mean(chosen_ratio) + xp.mean(rejected_ratio)) / 2,
    }
    return xp.mean(losses), metrics


class DPOObjective:
    """objective(model, batch) -> (loss, metrics) for the engine: the framework's
    `token_logprobs` on a pairs batch (`rung_rlhf.pairs`) holding its `reference`."""

    def __init__(self, token_logprobs: Callable, options: DPOOptions, rows: int) -> None:
        self.token_logprobs, self.options, self.rows = token_logprobs, options, rows

    def __call__(self, model: Any, batch: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
        values, _ = self.token_logprobs(model, model_inputs(batch))
        chosen, rejected = answer_logprobs(values, batch, self.rows)
        reference = ops.like(batch["reference"], chosen, dtype=chosen.dtype)
        tokens = ops.like(batch["answer_tokens"], chosen, dtype=chosen.dtype)
        o = self.options
        return dpo_loss(chosen, rejected, reference[:, 0], reference[:, 1], beta=o.beta, loss_type=o.loss_type,
                        label_smoothing=o.label_smoothing, chosen_tokens=tokens[:, 0], rejected_tokens=tokens[:, 1])


class DPOTrainer(PreferenceTrainer):
    """DPO on preference pairs, every weight or LoRA adapters (`trainer.lora`)."""

    options_model = DPOOptions

    def __init__(self, options: DPOOptions) -> None:
        super().__init__(options)
        self.layout = options.layout

    def objective(self, run: RunContext) -> Callable:
        self.token_logprobs = run.objective("token_logprobs")
        self.dpo = DPOObjective(self.token_logprobs, self.options, self.rows)
        return self.dpo

    def evaluator(self, run: RunContext, batches: list[dict[str, Any]]) -> Callable[[Any], Mapping[str, float]]:
        def evaluate(model: Any) -> dict[str, float]:
            def measure(batch: Mapping[str, Any]) -> dict[str, Any]:
                loss, metrics = self.dpo(model, batch)
                return {"loss": loss, **metrics}

            return mean_metrics(batches, measure)

        return evaluate

    def before_training(self, run, engine, train, held):
        """The reference log-probabilities of every pair, from the cache or computed now."""
        from rung.config import config_to_dict

        cache = ReferenceCache(run.output_dir / "reference")
        model = model_key(config_to_dict(run.config.backend))
        batch_size = max(self.options.batch_size, 1)
        out = []
        for name, pairs in (("train", train), ("eval", held)):
            if not pairs:
                out.append(None)
                continue
            key = f"{model}:{data_key(pairs, self.layout, self.max_length)}"

            def compute_now(pairs=pairs):
                batches = fixed_batches(pairs, batch_size, self.layout, self.max_length, self.pad_id)
                return compute(engine, self.token_logprobs, batches, self.rows)

            values, cached = reference_logprobs(cache, name, key, self.resuming(run), compute_now)
            run.log(0, {f"reference_{name}_cached": float(cached)})
            out.append(values)
        return out[0], out[1]

    def save(self, run: RunContext, backend: Any, tokenizer: Any) -> None:
        template = self.formatter.renderer.jinja
        if self.adapters is not None:
            self.save_adapter(run, tokenizer)
            return
        target = run.output_dir / "model"
        backend.save(target)
        save_tokenizer(tokenizer, target, template)

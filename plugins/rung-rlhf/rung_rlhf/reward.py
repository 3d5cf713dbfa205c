"""The `reward` trainer: a reward model from preference pairs (Bradley-Terry), saved as a
transformers sequence classifier.

The backend's model gets a score head (`backend.score_heads().add_score_head()`); a pair is
one packed row, prompt, chosen and rejected (`rung_rlhf.pairs`, shared layout: the prompt is
computed once and each answer sees the prompt alone), and the framework's `token_scores` is
read at each answer's last token: r_w, r_l. The loss, written once with `rung_rlhf.ops`:

    -log sigmoid(r_w - r_l [- margin])      (margin: the pair's `margin` field, `trainer.margin`)

Logged per step (objective metrics) and on held-out pairs with an `eval_` prefix: the loss,
`accuracy` (the share of pairs whose chosen answer scores higher), rewards/chosen,
rewards/rejected, rewards/margins. With `trainer.lora` only the adapters and the head train.
The result goes to `output_dir/model` through `save_scorer` (with the tokenizer and chat
template), so `AutoModelForSequenceClassification` gives the same scores, read at the last
token that is not padding; with LoRA the adapter (and head) also go to `output_dir/adapter`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from rung.context import RunContext
from rung.errors import ConfigError

from rung_lora.saving import save_tokenizer
from rung_rlhf import ops
from rung_rlhf.preference_options import RewardOptions
from rung_rlhf.preference_trainer import PreferenceTrainer, mean_metrics
from rung_rlhf.reference import model_inputs


def bradley_terry(chosen: Any, rejected: Any, margin: Any = None) -> tuple[Any, dict[str, Any]]:
    """The mean Bradley-Terry loss of scores [P] and its metrics (framework scalars)."""
    xp = ops.namespace(chosen)
    difference = chosen - rejected
    if margin is not None:
        difference = difference - margin
    metrics = {
        "accuracy": xp.mean(xp.astype(chosen > rejected, chosen.dtype)),
        "rewards/chosen": xp.mean(chosen),
        "rewards/rejected": xp.mean(rejected),
        "rewards/margins": xp.mean(chosen - rejected),
    }
    return -xp.mean(ops.logsigmoid(difference)), metrics


class RewardObjective:
    """objective(model, batch) -> (loss, metrics): `token_scores` read at each answer's last token."""

    def __init__(self, token_scores: Callable, use_margin: bool) -> None:
        self.token_scores, self.use_margin = token_scores, use_margin

    def scores(self, model: Any, batch: Mapping[str, Any]) -> tuple[Any, Any]:
        """(chosen, rejected) scores [P] of a shared-layout pairs batch."""
        values, _ = self.token_scores(model, model_inputs(batch))
        picked = ops.gather_positions(values, batch["last_positions"])
        return picked[:, 0], picked[:, 1]

    def __call__(self, model: Any, batch: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
        chosen, rejected = self.scores(model, batch)
        margin = ops.like(batch["margin"], chosen, dtype=chosen.dtype) if self.use_margin else None
        return bradley_terry(chosen, rejected, margin)


class RewardTrainer(PreferenceTrainer):
    """A score head (and the model, or LoRA adapters) trained on preference pairs."""

    options_model = RewardOptions
    layout = "shared"

    def objective(self, run: RunContext) -> Callable:
        self.reward = RewardObjective(run.objective("token_scores"), self.options.margin)
        return self.reward

    def prepare_model(self, run: RunContext, backend: Any) -> None:
        if not callable(getattr(backend, "score_heads", None)):
            raise ConfigError(f"trainer 'reward': backend '{run.config.backend.name}' cannot carry a score head "
                              "(it has no score_heads()); use torch, hf or jax")
        self.heads = backend.score_heads()
        seed = self.options.head_seed if self.options.head_seed is not None else run.seed
        self.heads.add_score_head(seed=seed)

    def modules_to_save(self) -> tuple[str, ...]:
        return ("score",)

    def evaluator(self, run: RunContext, batches: list[dict[str, Any]]) -> Callable[[Any], Mapping[str, float]]:
        def evaluate(model: Any) -> dict[str, float]:
            def measure(batch: Mapping[str, Any]) -> dict[str, Any]:
                loss, metrics = self.reward(model, batch)
                return {"loss": loss, **metrics}

            return mean_metrics(batches, measure)

        return evaluate

    def save(self, run: RunContext, backend: Any, tokenizer: Any) -> None:
        if self.adapters is not None:
            self.save_adapter(run, tokenizer)
        target = run.output_dir / "model"
        self.heads.save_scorer(target, pad_token_id=self.pad_id)
        save_tokenizer(tokenizer, target, self.formatter.renderer.jinja)

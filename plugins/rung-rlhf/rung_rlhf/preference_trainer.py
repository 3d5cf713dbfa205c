"""What the preference trainers (reward, dpo) share: reading and formatting pairs, the held-out
split, LoRA adapters, the batch stream, evaluation before the first step, and saving.

A subclass says which objective it hands the engine (`objective`), what it measures on
held-out pairs (`evaluator`), and how it changes the model first (`prepare_model`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from rung.config import config_to_dict
from rung.context import RunContext
from rung.errors import ConfigError
from rung.records import LoraSpec, PreferencePair, TrainResult

from rung_lora.data import split_examples
from rung_lora.saving import save_tokenizer
from rung_lora.trainer import base_reference, evaluate_now, model_context, resolve_tokenizer
from rung_rlhf.formatting import Formatter, TokenizedPair, formatter
from rung_rlhf.pairs import PairBatches, rows_per_pair
from rung_rlhf.preference_options import FeedbackOptions


def read_pairs(source: Any, where: str) -> list[PreferencePair]:
    pairs = list(source.read())
    wrong = next((p for p in pairs if not isinstance(p, PreferencePair)), None)
    if wrong is not None:
        raise ConfigError(f"{where}: the data source gives {type(wrong).__name__} records, not preference pairs "
                          "(use preference_jsonl or preference_hf)")
    return pairs


def mean_metrics(batches: Sequence[Mapping[str, Any]], measure: Callable[[Mapping[str, Any]], Mapping[str, Any]],
                 prefix: str = "eval_") -> dict[str, float]:
    """Pair-weighted means of `measure(batch)` (framework scalars) over fixed batches."""
    totals: dict[str, float] = {}
    count = 0
    for batch in batches:
        pairs = len(batch["margin"])
        for key, value in measure(batch).items():
            totals[key] = totals.get(key, 0.0) + float(value) * pairs
        count += pairs
    return {f"{prefix}{key}": value / max(count, 1) for key, value in totals.items()}


class PreferenceTrainer:
    """The run of a preference trainer; subclasses give the objective and the evaluator."""

    options_model = FeedbackOptions
    layout = "shared"

    def __init__(self, options: FeedbackOptions) -> None:
        self.options = options
        self.formatter: Formatter | None = None
        self.adapters: Any = None
        self.base: str | None = None

    # -- what a subclass gives

    def prepare_model(self, run: RunContext, backend: Any) -> None:
        """Change the model before adapters are added (reward: a score head)."""

    def modules_to_save(self) -> tuple[str, ...]:
        """Modules LoRA trains in full besides the adapters."""
        return ()

    def objective(self, run: RunContext) -> Callable:
        raise NotImplementedError

    def evaluator(self, run: RunContext, batches: list[dict[str, Any]]) -> Callable[[Any], Mapping[str, float]]:
        raise NotImplementedError

    def before_training(self, run: RunContext, engine: Any, train: list[TokenizedPair],
                        held: list[TokenizedPair]) -> tuple[Any, Any]:
        """(reference [N, 2] of the training pairs, of the held-out pairs) or (None, None)."""
        return None, None

    def save(self, run: RunContext, backend: Any, tokenizer: Any) -> None:
        raise NotImplementedError

    # -- shared steps

    def add_lora(self, run: RunContext, backend: Any) -> None:
        o = self.options.lora
        if o is None:
            return
        if not callable(getattr(backend, "adapters", None)):
            raise ConfigError(f"trainer.lora: backend '{run.config.backend.name}' cannot carry LoRA adapters "
                              "(it has no adapters()); use torch, hf or jax")
        self.adapters = backend.adapters()
        self.base = base_reference(run, backend)
        targets = o.target_modules if isinstance(o.target_modules, str) else tuple(o.target_modules)
        self.adapters.add_lora(LoraSpec(r=o.r, alpha=o.alpha, dropout=o.dropout, target_modules=targets,
                                        modules_to_save=self.modules_to_save(), rslora=o.use_rslora,
                                        seed=run.seed))
        trainable, total = self.adapters.trainable_parameters()
        run.log(0, {"trainable_params": float(trainable), "total_params": float(total),
                    "trainable_fraction": trainable / max(total, 1)})

    def save_adapter(self, run: RunContext, tokenizer: Any) -> Path:
        template = self.formatter.renderer.jinja if self.formatter else None
        adapter = run.output_dir / "adapter"
        self.adapters.save_adapter(adapter, base=self.base, backend=run.config.backend.name,
                                   backend_options=config_to_dict(run.config.backend), chat_template=template)
        save_tokenizer(tokenizer, adapter, template)
        return adapter

    def resuming(self, run: RunContext) -> bool:
        folder = run.output_dir / "checkpoints"
        return self.options.resume != "never" and folder.is_dir() and any(folder.iterdir())

    def pairs(self, run: RunContext) -> tuple[list[TokenizedPair], list[TokenizedPair], int]:
        opts = self.options
        train = read_pairs(run.data(), "data")
        if opts.eval_data is not None:
            held = read_pairs(run.build("data_source", opts.eval_data, "trainer.eval_data"), "trainer.eval_data")
        else:
            train, held = split_examples(train, opts.eval_size, run.seed)
        train_ids = [self.formatter.pair(p) for p in train]
        held_ids = [self.formatter.pair(p) for p in held]
        truncated = sum(p.truncated > 0 for p in train_ids + held_ids)
        return train_ids, held_ids, truncated

    def train(self, run: RunContext) -> TrainResult:
        opts = self.options
        backend = run.backend()
        tokenizer = resolve_tokenizer(run, backend)
        self.formatter = formatter(opts, tokenizer)
        context = model_context(getattr(backend, "model", None))
        self.max_length = min(opts.max_length, context) if context else opts.max_length
        self.pad_id = next((t for t in (tokenizer.pad_id, tokenizer.eos_id) if t is not None), 0)
        objective = self.objective(run)
        self.prepare_model(run, backend)
        self.add_lora(run, backend)
        train, held, truncated = self.pairs(run)
        run.log(0, {"train_pairs": float(len(train)), "eval_pairs": float(len(held)),
                    "truncated_pairs": float(truncated), "template": self.formatter.renderer.name})
        engine = backend.engine()
        rank, world = int(getattr(engine, "rank", 0)), int(getattr(engine, "world_size", 1))
        reference, held_reference = self.before_training(run, engine, train, held)
        stream = PairBatches(train, opts.batch_size, self.layout, self.max_length, self.pad_id, reference=reference,
                             seed=run.seed, shuffle=opts.shuffle, rank=rank, world_size=world)
        evaluate = None
        if held:
            from rung_rlhf.pairs import fixed_batches

            batches = fixed_batches(held, opts.batch_size, self.layout, self.max_length, self.pad_id, held_reference)
            evaluate = self.evaluator(run, batches)
        if evaluate is not None and opts.eval_on_start and rank == 0 and not self.resuming(run):
            run.log(0, evaluate_now(engine, evaluate, backend))
        result = engine.fit(objective, stream, opts, run, evaluate)
        if rank == 0:
            self.save(run, backend, tokenizer)
        return result

    @property
    def rows(self) -> int:
        return rows_per_pair(self.layout)

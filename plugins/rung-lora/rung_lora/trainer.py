"""The `sft` and `lora` trainers: shape chat data, hand the masked objective to the backend's engine.

Framework-neutral: the loss is the backend framework's `next_token_loss` (labels -100 on every
token that is not the assistant's), the held-out loss its `token_nll_sum`, the task metric the
backend's own generation, and LoRA adapters the backend's `adapters()` (`rung.interfaces.Adapters`:
peft on torch and hf, Flax NNX on jax). So one config trains on any compute backend.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rung.config import config_to_dict
from rung.context import RunContext
from rung.errors import ConfigError
from rung.model_config import LocalModelOptions
from rung.records import LoraSpec, TrainResult

from rung_lora.data import Prepared, SFTBatches, prepare_rows, prompt_and_reference, split_examples
from rung_lora.evaluation import Evaluator, TaskMetric, held_out_batches, trimmed_prompt
from rung_lora.options import LoraOptions, SFTOptions
from rung_lora.saving import save_tokenizer
from rung_lora.templates import ChatRenderer, make_renderer
from rung.transformers_tokenizer import as_rung_tokenizer


def resolve_tokenizer(run: RunContext, backend: Any) -> Any:
    """The run's tokenizer, or the backend's own (an hf backend brings one)."""
    tokenizer = run.tokenizer() or getattr(backend, "tokenizer", None)
    if tokenizer is None:
        raise ConfigError(f"trainer '{run.config.trainer.name}' needs a tokenizer: add a 'tokenizer' "
                          "section or use a backend that has its own")
    return as_rung_tokenizer(tokenizer)


def model_context(model: Any) -> int | None:
    """The longest sequence the model takes (rung's max_seq_len, transformers' positions)."""
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "max_seq_len", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return None


def base_reference(run: RunContext, backend: Any) -> str | None:
    """Where the base model of an adapter lives (for its note), saving it first to
    output_dir/base when it exists only in memory (a preset with new weights)."""
    model = getattr(run.config.backend, "model", None)
    if isinstance(model, str) and Path(model).is_dir():
        return str(Path(model).resolve())
    if isinstance(run.config.backend, LocalModelOptions):
        target = run.output_dir / "base"
        backend.save(target)
        return str(target.resolve())
    return model if isinstance(model, str) else None


def evaluate_now(engine: Any, evaluate: Any, backend: Any) -> dict[str, float]:
    """Run `evaluate` once before training, in the engine's evaluation context."""
    if hasattr(engine, "evaluate"):
        return engine.evaluate(evaluate)
    return evaluate(backend.model)  # an engine without one: the evaluator on the model as it is


class SFTTrainer:
    """Full fine-tuning: every weight trains, loss on the assistant's tokens by default."""

    options_model = SFTOptions

    def __init__(self, options: SFTOptions) -> None:
        self.options = options
        self.renderer: ChatRenderer | None = None
        self.evaluator: Evaluator | None = None

    # -- steps a subclass changes

    def prepare_model(self, run: RunContext, backend: Any) -> None:
        """Change the backend's model before the engine is made (the lora trainer adds adapters)."""

    def save(self, run: RunContext, backend: Any, tokenizer: Any) -> None:
        target = run.output_dir / "model"
        backend.save(target)
        save_tokenizer(tokenizer, target, self._saved_template())

    # -- the run

    def _saved_template(self) -> str | None:
        """rung's template when the data was rendered with it (the tokenizer's own is saved with it)."""
        return self.renderer.jinja if self.renderer is not None else None

    def _data(self, run: RunContext, tokenizer: Any, max_length: int) -> tuple[Prepared, Prepared, list]:
        opts = self.options
        examples = list(run.data().read())
        if opts.eval_data is not None:
            source = run.build("data_source", opts.eval_data, "trainer.eval_data")
            train_examples, eval_examples = examples, list(source.read())
        else:
            train_examples, eval_examples = split_examples(examples, opts.eval_size, run.seed)
        shape = dict(max_length=max_length, truncation=opts.truncation, train_on=opts.train_on,
                     system_prompt=opts.system_prompt)
        train = prepare_rows(train_examples, self.renderer, tokenizer, packing=opts.packing, **shape)
        held = prepare_rows(eval_examples, self.renderer, tokenizer, packing=False, **shape)
        return train, held, eval_examples

    def _task_metric(self, run: RunContext, backend: Any, tokenizer: Any, eval_examples: list,
                     max_length: int) -> TaskMetric | None:
        opts = self.options
        if opts.eval_metric is None:
            return None
        if not eval_examples:
            raise ConfigError("trainer.eval_metric needs held-out examples: set eval_size or eval_data")
        score = run.build("reward_function", {"name": opts.eval_metric, **opts.eval_metric_options},
                          "trainer.eval_metric")
        keep = max(1, max_length - opts.max_new_tokens)  # prompt and answer fit the context
        prompts, references = [], []
        for example in eval_examples[: opts.eval_generate]:
            messages, reference = prompt_and_reference(example, opts.system_prompt)
            prompts.append(trimmed_prompt(self.renderer(messages, add_generation_prompt=True), tokenizer, keep))
            references.append(reference)
        return TaskMetric(opts.eval_metric, score, backend, prompts, references, self.renderer.stop,
                          max_new_tokens=opts.max_new_tokens, batch_size=max(opts.batch_size, 32))

    def _teach_template(self, tokenizer: Any) -> None:
        """Give a tokenizer without a chat template the one the data is rendered with, so the
        backend serves the trained model in that format and saves it with the tokenizer."""
        if not self.renderer.jinja:
            return
        for holder in (getattr(tokenizer, "hf", None), tokenizer):
            if holder is not None and hasattr(holder, "chat_template") and not holder.chat_template:
                try:
                    holder.chat_template = self.renderer.jinja
                except AttributeError:  # a read-only property: chat_template.jinja still says it
                    pass

    def _resuming(self, run: RunContext) -> bool:
        folder = run.output_dir / "checkpoints"
        return self.options.resume != "never" and folder.is_dir() and any(folder.iterdir())

    def train(self, run: RunContext) -> TrainResult:
        opts = self.options
        backend = run.backend()
        objective, nll_sum = run.objective("next_token_loss"), run.objective("token_nll_sum")
        tokenizer = resolve_tokenizer(run, backend)
        self.renderer = make_renderer(opts.chat_template, tokenizer)
        context = model_context(getattr(backend, "model", None))
        max_length = min(opts.max_length, context) if context else opts.max_length
        self.prepare_model(run, backend)  # (lora: a preset base is saved first, as it was made)
        self._teach_template(tokenizer)
        train, held, eval_examples = self._data(run, tokenizer, max_length)
        task = self._task_metric(run, backend, tokenizer, eval_examples, max_length)
        run.log(0, {"train_examples": float(len(train.rows) if not opts.packing else train.examples - train.dropped),
                    "train_rows": float(len(train.rows)), "eval_examples": float(len(held.rows)),
                    "dropped_examples": float(train.dropped + held.dropped),
                    "truncated_examples": float(train.truncated + held.truncated),
                    "trained_token_fraction": train.trained_tokens / max(train.tokens, 1),
                    "template": self.renderer.name})

        engine = backend.engine()
        rank, world = int(getattr(engine, "rank", 0)), int(getattr(engine, "world_size", 1))
        pad_id = next((t for t in (tokenizer.pad_id, tokenizer.eos_id) if t is not None), 0)
        stream = SFTBatches(train.rows, opts.batch_size, seed=run.seed, shuffle=opts.shuffle,
                            rank=rank, world_size=world, pad_id=pad_id, pad_to_multiple_of=opts.pad_to_multiple_of)
        evaluate = None
        if held.rows or task is not None:
            batches = held_out_batches(held.rows, opts.batch_size, pad_id, opts.pad_to_multiple_of, opts.eval_batches)
            self.evaluator = evaluate = Evaluator(nll_sum, batches, task)
        if evaluate is not None and opts.eval_on_start and rank == 0 and not self._resuming(run):
            run.log(0, evaluate_now(engine, evaluate, backend))
        result = engine.fit(objective, stream, opts, run, evaluate)
        if rank == 0:
            self.save(run, backend, tokenizer)
        return result


class LoraTrainer(SFTTrainer):
    """LoRA adapters through the backend's `adapters()`; the base weights stay frozen."""

    options_model = LoraOptions

    def __init__(self, options: LoraOptions) -> None:
        super().__init__(options)
        self.base: str | None = None
        self.adapters: Any = None

    def spec(self, run: RunContext) -> LoraSpec:
        o = self.options
        targets = o.target_modules if isinstance(o.target_modules, str) else tuple(o.target_modules)
        return LoraSpec(r=o.r, alpha=o.alpha, dropout=o.dropout, target_modules=targets,
                        modules_to_save=tuple(o.modules_to_save), dora=o.use_dora, rslora=o.use_rslora,
                        qlora=o.qlora, seed=run.seed)

    def prepare_model(self, run: RunContext, backend: Any) -> None:
        if not callable(getattr(backend, "adapters", None)):
            raise ConfigError(f"trainer 'lora': backend '{run.config.backend.name}' cannot carry LoRA adapters "
                              "(it has no adapters()); use torch, hf or jax")
        self.adapters = backend.adapters()
        spec = self.spec(run)
        self.base = base_reference(run, backend)
        self.adapters.add_lora(spec)
        trainable, total = self.adapters.trainable_parameters()
        run.log(0, {"trainable_params": float(trainable), "total_params": float(total),
                    "trainable_fraction": trainable / max(total, 1)})

    def save(self, run: RunContext, backend: Any, tokenizer: Any) -> None:
        template = self._saved_template()
        adapter = run.output_dir / "adapter"
        self.adapters.save_adapter(adapter, base=self.base, backend=run.config.backend.name,
                                   backend_options=config_to_dict(run.config.backend), chat_template=template)
        save_tokenizer(tokenizer, adapter, template)
        if self.options.merge:
            self.adapters.merge_adapter()
            backend.save(run.output_dir / "model")
            save_tokenizer(tokenizer, run.output_dir / "model", template)

"""The `sft` and `lora` trainers: shape chat data, hand the masked objective to the torch engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from rung.config import config_to_dict, section_model
from rung.errors import ConfigError, RungError
from rung.model_config import LocalModelOptions
from rung.records import TrainResult
from rung.runner import Run, build

from rung_lora.data import (
    Prepared,
    SFTBatches,
    prepare_rows,
    prompt_and_reference,
    split_examples,
)
from rung_lora.options import LoraOptions, SFTOptions
from rung_lora.templates import ChatRenderer, make_renderer
from rung.transformers_tokenizer import as_rung_tokenizer


def _section(run: Run, kind: str, data: dict[str, Any], where: str) -> Any:
    if not isinstance(data, dict) or "name" not in data:
        raise ConfigError(f"{where}: needs a 'name'")
    model = section_model(run.plugins.registry, kind, data["name"])
    try:
        return model.model_validate(dict(data))
    except ValidationError as exc:
        first = exc.errors()[0]
        path = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"{where}.{path}: {first['msg']}") from None


def resolve_tokenizer(run: Run, backend: Any) -> Any:
    """The run's tokenizer, or the backend's own (an hf backend brings one)."""
    tokenizer = run.tokenizer() or getattr(backend, "tokenizer", None)
    if tokenizer is None:
        raise ConfigError(f"trainer '{run.config.trainer.name}' needs a tokenizer: add a 'tokenizer' "
                          "section or use a backend that has its own")
    return as_rung_tokenizer(tokenizer)


def model_context(model: Any) -> int | None:
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "max_seq_len", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return None


def framework_parts(run: Run, backend: Any, lora: bool = False) -> tuple[Any, Any]:
    """The objective and evaluator for the backend's framework.

    Data shaping is framework-neutral (numpy batches); a framework brings
    `sft_objective(model, batch) -> (loss, metrics)` and an `Evaluator` with the constructor of
    `rung_lora.torch_ops.Evaluator`: torch's live here, jax's in `rung_jax.sft` (sft only).
    """
    framework = getattr(backend, "framework", None)
    if framework == "torch":
        from rung_lora import torch_ops

        return torch_ops.sft_objective, torch_ops.Evaluator
    if framework == "jax" and not lora:
        try:
            from rung_jax import sft as jax_sft  # type: ignore[attr-defined]
        except ImportError:
            pass
        else:
            return jax_sft.sft_objective, jax_sft.Evaluator
    raise ConfigError(f"trainer '{run.config.trainer.name}' has no objective for backend "
                      f"'{run.config.backend.name}' (framework: {framework or 'none'})")


class SFTTrainer:
    """Full fine-tuning: every weight trains, loss on the assistant's tokens by default."""

    options_model = SFTOptions

    def __init__(self, options: SFTOptions) -> None:
        self.options = options
        self.renderer: ChatRenderer | None = None
        self.evaluator: Any = None

    # -- steps a subclass changes

    def prepare_model(self, run: Run, backend: Any) -> None:
        """Change backend.model before the engine is made (the lora trainer wraps it)."""

    def save(self, run: Run, backend: Any, tokenizer: Any) -> None:
        from rung_lora.adapters import save_tokenizer

        target = run.output_dir / "model"
        backend.save(target)
        save_tokenizer(tokenizer, target, self._saved_template())

    # -- the run

    def _saved_template(self) -> str | None:
        return self.renderer.jinja if self.renderer is not None else None

    def _data(self, run: Run, tokenizer: Any, max_length: int) -> tuple[Prepared, Prepared, list]:
        opts = self.options
        examples = list(run.data().read())
        if opts.eval_data is not None:
            source = build(run.plugins, "data_source", _section(run, "data_source", opts.eval_data, "trainer.eval_data"))
            train_examples, eval_examples = examples, list(source.read())
        else:
            train_examples, eval_examples = split_examples(examples, opts.eval_size, run.config.seed)
        shape = dict(max_length=max_length, truncation=opts.truncation, train_on=opts.train_on,
                     system_prompt=opts.system_prompt)
        train = prepare_rows(train_examples, self.renderer, tokenizer, packing=opts.packing, **shape)
        held = prepare_rows(eval_examples, self.renderer, tokenizer, packing=False, **shape)
        return train, held, eval_examples

    def _task_metric(self, run: Run, tokenizer: Any, eval_examples: list, max_length: int) -> Any:
        opts = self.options
        if opts.eval_metric is None:
            return None
        if not eval_examples:
            raise ConfigError("trainer.eval_metric needs held-out examples: set eval_size or eval_data")
        from rung_lora.torch_ops import TaskMetric

        section = _section(run, "reward_function", {"name": opts.eval_metric, **opts.eval_metric_options},
                           "trainer.eval_metric")
        score = build(run.plugins, "reward_function", section)
        prompts, references = [], []
        for example in eval_examples[: opts.eval_generate]:
            messages, reference = prompt_and_reference(example, opts.system_prompt)
            prompts.append(tokenizer.encode(self.renderer(messages, add_generation_prompt=True)))
            references.append(reference)
        return TaskMetric(opts.eval_metric, score, prompts, references, tokenizer, self.renderer.stop,
                          max_new_tokens=opts.max_new_tokens, max_length=max_length,
                          batch_size=max(opts.batch_size, 32))

    def _resuming(self, run: Run) -> bool:
        folder = run.output_dir / "checkpoints"
        return self.options.resume != "never" and folder.is_dir() and any(folder.iterdir())

    def train(self, run: Run) -> TrainResult:
        opts = self.options
        backend = run.backend()
        sft_objective, Evaluator = framework_parts(run, backend, lora=isinstance(opts, LoraOptions))
        if isinstance(opts, LoraOptions) and opts.qlora:
            from rung_lora.adapters import quantize_4bit  # noqa: F401 - fail before reading data
            import torch

            if not torch.cuda.is_available():
                raise RungError("trainer.qlora: QLoRA needs a CUDA GPU (bitsandbytes 4-bit kernels) and this "
                                "machine has none; set trainer.qlora=false to train LoRA on full-precision weights")
        tokenizer = resolve_tokenizer(run, backend)
        self.renderer = make_renderer(opts.chat_template, tokenizer)
        hf = getattr(tokenizer, "hf", None)
        if self.renderer.jinja and hf is not None and not getattr(hf, "chat_template", None):
            hf.chat_template = self.renderer.jinja  # the backend then serves (and saves) the same format
        context = model_context(getattr(backend, "model", None))
        max_length = min(opts.max_length, context) if context else opts.max_length
        train, held, eval_examples = self._data(run, tokenizer, max_length)
        task = self._task_metric(run, tokenizer, eval_examples, max_length)
        run.log(0, {"train_examples": float(len(train.rows) if not opts.packing else train.examples - train.dropped),
                    "train_rows": float(len(train.rows)), "eval_examples": float(len(held.rows)),
                    "dropped_examples": float(train.dropped + held.dropped),
                    "truncated_examples": float(train.truncated + held.truncated),
                    "trained_token_fraction": train.trained_tokens / max(train.tokens, 1),
                    "template": self.renderer.name})

        self.prepare_model(run, backend)
        engine = backend.engine()
        rank, world = int(getattr(engine, "rank", 0)), int(getattr(engine, "world_size", 1))
        pad_id = next((t for t in (tokenizer.pad_id, tokenizer.eos_id) if t is not None), 0)
        stream = SFTBatches(train.rows, opts.batch_size, seed=run.config.seed, shuffle=opts.shuffle,
                            rank=rank, world_size=world, pad_id=pad_id, pad_to_multiple_of=opts.pad_to_multiple_of)
        evaluate = None
        if held.rows or task is not None:
            self.evaluator = evaluate = Evaluator(held.rows, opts.batch_size, pad_id, opts.pad_to_multiple_of,
                                                  opts.eval_batches, task)
        if evaluate is not None and opts.eval_on_start and rank == 0 and not self._resuming(run):
            run.log(0, evaluate(backend.model))
        result = engine.fit(sft_objective, stream, opts, run, evaluate)
        if rank == 0:
            self.save(run, backend, tokenizer)
        return result


class LoraTrainer(SFTTrainer):
    """LoRA / DoRA / QLoRA adapters through peft; the base weights stay frozen."""

    options_model = LoraOptions

    def __init__(self, options: LoraOptions) -> None:
        super().__init__(options)
        self.base: str | None = None

    def _base_reference(self, run: Run, backend: Any) -> str | None:
        """Where the base model lives, saving it first when it exists only in memory (a preset)."""
        model = getattr(run.config.backend, "model", None)
        if isinstance(model, str) and Path(model).is_dir():
            return str(Path(model).resolve())
        if isinstance(run.config.backend, LocalModelOptions):
            target = run.output_dir / "base"
            backend.save(target)
            return str(target.resolve())
        return model if isinstance(model, str) else None

    def prepare_model(self, run: Run, backend: Any) -> None:
        from rung_lora.adapters import count_parameters, wrap_lora

        import torch

        self.base = self._base_reference(run, backend)
        with torch.random.fork_rng(devices=[]):  # the adapters' initial weights come from the run's seed
            torch.manual_seed(run.config.seed)
            backend.model = wrap_lora(backend.model, self.options)
        trainable, total = count_parameters(backend.model)
        run.log(0, {"trainable_params": float(trainable), "total_params": float(total),
                    "trainable_fraction": trainable / max(total, 1)})

    def save(self, run: Run, backend: Any, tokenizer: Any) -> None:
        from rung_lora.adapters import save_adapter, save_tokenizer

        options = config_to_dict(run.config.backend)
        save_adapter(backend.model, run.output_dir / "adapter", base=self.base, backend=run.config.backend.name,
                     backend_options=options, tokenizer=tokenizer, chat_template=self._saved_template())
        if self.options.merge:
            backend.model = backend.model.merge_and_unload()
            backend.save(run.output_dir / "model")
            save_tokenizer(tokenizer, run.output_dir / "model", self._saved_template())

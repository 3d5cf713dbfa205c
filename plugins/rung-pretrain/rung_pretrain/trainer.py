"""The `pretrain` trainer: next-token prediction on the token shards `prepare` writes.

`PretrainTrainer.train(run)`:

1. prepares the data (sources -> cleaning -> tokenizer -> shards; skipped when up to date),
   which trains the run's tokenizer and hands it to the run (`training_data`);
2. builds the backend (a preset: new weights sized for that tokenizer; a checkpoint folder:
   continue pretraining it);
3. hands the backend's engine the framework's `next_token_loss` objective (by name: the
   trainer imports no framework), a batch stream for the engine's rank, and an evaluator
   (validation loss, perplexity and bits per byte, text samples: `evaluation`);
4. saves the model to `<output_dir>/model`, plots the loss curves to `<output_dir>/loss.png`
   and prints the unigram baseline, the final validation loss and a few samples (`run_report`).

The saved model carries no chat template: it was never trained on conversations, so every
backend continues its prompts as text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rung.errors import ConfigError
from rung.records import TrainResult

from rung_pretrain.evaluation import Evaluator
from rung_pretrain.metrics import RecordingRun
from rung_pretrain.training_data import StepCounter, check_same_tokenizer, prepare_data, use_checkpoint_tokenizer
from rung_pretrain.trainer_options import PretrainOptions

__all__ = ["PretrainOptions", "PretrainTrainer"]


class PretrainTrainer:
    """Pretrain (or continue pretraining) a causal LM on packed token windows."""

    def __init__(self, options: PretrainOptions | None = None, **_: Any) -> None:
        self.options = options if options is not None else PretrainOptions()

    def train(self, run: Any) -> TrainResult:
        from rung.console import get_console

        from rung_pretrain import run_report as report

        opts = self.options
        console = get_console()
        checkpoint_tokenizer = use_checkpoint_tokenizer(run)
        data = prepare_data(run)
        if checkpoint_tokenizer is not None:
            check_same_tokenizer(checkpoint_tokenizer, data)
        run.use_tokenizer(data.tokenizer)
        backend = run.backend()
        if not callable(getattr(backend, "engine", None)):
            raise ConfigError(f"trainer 'pretrain' needs a compute backend (torch or jax), "
                              f"not '{run.config.backend.name}'")
        objective, nll_sum = run.objective("next_token_loss"), run.objective("token_nll_sum")
        seq_len = self._seq_len(backend, data)

        engine = backend.engine()
        rank, world = int(getattr(engine, "rank", 0)), int(getattr(engine, "world_size", 1))
        main = rank == 0
        stream = data.train_batches(batch_size=opts.batch_size, seq_len=seq_len, seed=run.seed, rank=rank,
                                    world_size=world, sampling=opts.sampling)
        counted = StepCounter(stream, opts.grad_accum_steps)
        val = []
        if opts.val_batches and data.validation_tokens > seq_len:
            # Every rank scores the whole (small) validation set: no collective needed.
            val = data.validation_batches(batch_size=opts.val_batch_size or opts.batch_size, seq_len=seq_len,
                                          max_batches=opts.val_batches, rank=0, world_size=1)
        baseline = float(data.unigram_loss()) if data.validation_tokens else None
        if main:
            console.print(
                f"data: {data.train_tokens:,} train / {data.validation_tokens:,} validation tokens, "
                f"vocabulary {data.tokenizer.vocab_size}"
                + (f"; unigram baseline {baseline:.4f} nats/token" if baseline is not None else ""),
                highlight=False, markup=False,
            )
            report.describe_model(console, backend, seq_len, opts)

        recorder = RecordingRun(run)
        evaluator = Evaluator(opts, nll_sum, val, backend, recorder, counted, main, baseline,
                              sample_here=main or world > 1, tokenizer=data.tokenizer)
        result = engine.fit(objective, counted, opts, recorder, evaluate=evaluator)

        metrics = dict(result.metrics or {})
        if baseline is not None:
            metrics["unigram_loss"] = baseline
        if evaluator.last is not None:
            metrics.update(evaluator.last)
        model_dir = Path(run.output_dir) / "model"
        backend.save(model_dir)  # every rank: sharded weights are gathered, rank 0 writes
        samples = []
        if opts.print_samples and opts.sample_prompts and evaluator.sample_here:
            samples = evaluator.samples(opts.final_sample_tokens or opts.sample_tokens)
        if main:
            if opts.plot:
                plot_path = report.plot(run, recorder, baseline)
                if plot_path is not None:
                    console.print(f"loss curves: {plot_path}", highlight=False, markup=False)
            if samples:
                report.print_samples(samples, Path(run.output_dir) / "samples.txt")
            console.print(report.summary(baseline, metrics.get("val_loss"), result.final_loss,
                                         metrics.get("val_bpb")),
                          highlight=False, markup=False)
            console.print(f"model saved to {model_dir}", highlight=False, markup=False)
        return TrainResult(steps=result.steps, output_dir=str(run.output_dir), final_loss=result.final_loss,
                           metrics=metrics, checkpoint=result.checkpoint)

    def _seq_len(self, backend: Any, data: Any) -> int:
        """Tokens per window, checked against the model's context and vocabulary."""
        model_config = getattr(backend, "config", None)
        max_len = getattr(model_config, "max_seq_len", None)
        seq_len = self.options.seq_len or max_len or 256
        if max_len is not None and seq_len > max_len:
            raise ConfigError(
                f"trainer.seq_len: {seq_len} is longer than the model's context ({max_len}); "
                f"lower it or set backend.architecture.max_seq_len"
            )
        vocab = getattr(model_config, "vocab_size", None)
        if vocab is not None and data.tokenizer.vocab_size > vocab:
            raise ConfigError(
                f"backend.model: the model's vocabulary ({vocab}) is smaller than the data's "
                f"tokenizer ({data.tokenizer.vocab_size}); prepare the data with the model's tokenizer"
            )
        return seq_len

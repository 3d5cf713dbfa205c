"""The `pretrain` trainer: next-token prediction on the token shards `prepare` writes.

`PretrainTrainer.train(run)`:

1. prepares the data (sources -> cleaning -> tokenizer -> shards; skipped when up to date),
   which trains the run's tokenizer and hands it to the run;
2. builds the backend (a preset: new weights sized for that tokenizer; a checkpoint folder:
   continue pretraining it);
3. hands the engine of the backend's framework the next-token objective, a batch stream for
   the engine's rank, and an evaluator (validation loss and perplexity, text samples);
4. saves the model to `<output_dir>/model`, plots the loss curves to `<output_dir>/loss.png`
   and prints the unigram baseline, the final validation loss and a few samples.

Only pydantic and the core are imported here at module level: torch, jax and matplotlib are
imported when a run uses them.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rung.errors import ConfigError, RungError
from rung.records import GenerationRequest, TrainResult
from rung_pretrain.trainer_options import PretrainOptions

__all__ = ["PretrainOptions", "PretrainTrainer"]


class PretrainTrainer:
    """Pretrain (or continue pretraining) a causal LM on packed token windows."""

    def __init__(self, options: PretrainOptions | None = None, **_: Any) -> None:
        self.options = options if options is not None else PretrainOptions()

    # ------------------------------------------------------------------ the run

    def train(self, run: Any) -> TrainResult:
        from rung.console import get_console

        opts = self.options
        console = get_console()
        checkpoint_tokenizer = _use_checkpoint_tokenizer(run)
        data = _prepare(run)
        if checkpoint_tokenizer is not None:
            _check_same_tokenizer(checkpoint_tokenizer, data)
        run.use_tokenizer(data.tokenizer)
        backend = run.backend()
        framework = getattr(backend, "framework", None)
        if framework not in ("torch", "jax"):
            raise ConfigError(
                f"trainer 'pretrain' needs a compute backend (torch or jax), not '{run.config.backend.name}'"
            )
        model_config = getattr(backend, "config", None)
        max_len = getattr(model_config, "max_seq_len", None)
        seq_len = opts.seq_len or max_len or 256
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

        engine = backend.engine()
        rank, world = int(getattr(engine, "rank", 0)), int(getattr(engine, "world_size", 1))
        main = rank == 0
        seed = int(getattr(run.config, "seed", 0) or 0)
        stream = data.train_batches(
            batch_size=opts.batch_size, seq_len=seq_len, seed=seed, rank=rank, world_size=world,
            sampling=opts.sampling,
        )
        counted = StepCounter(stream, opts.grad_accum_steps)
        val = []
        if opts.val_batches and data.validation_tokens > seq_len:
            # Every rank scores the whole (small) validation set: no collective needed.
            val = data.validation_batches(
                batch_size=opts.val_batch_size or opts.batch_size, seq_len=seq_len,
                max_batches=opts.val_batches, rank=0, world_size=1,
            )
        baseline = float(data.unigram_loss()) if data.validation_tokens else None
        if main:
            console.print(
                f"data: {data.train_tokens:,} train / {data.validation_tokens:,} validation tokens, "
                f"vocabulary {data.tokenizer.vocab_size}"
                + (f"; unigram baseline {baseline:.4f} nats/token" if baseline is not None else ""),
                highlight=False, markup=False,
            )
            _describe_model(console, backend, seq_len, opts)

        parts = _framework_parts(framework, backend)
        recorder = RecordingRun(run, main)
        # Under FSDP every rank takes part in each forward pass: all ranks sample, rank 0 logs.
        evaluator = Evaluator(opts, parts, val, backend, recorder, counted, main, baseline, sample_here=main or world > 1)

        result = engine.fit(parts.objective, counted, opts, recorder, evaluate=evaluator)

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
                plot_path = _plot(run, recorder, baseline)
                if plot_path is not None:
                    console.print(f"loss curves: {plot_path}", highlight=False, markup=False)
            if samples:
                _print_samples(samples, Path(run.output_dir) / "samples.txt")
            console.print(_summary(baseline, metrics.get("val_loss"), result.final_loss), highlight=False, markup=False)
            console.print(f"model saved to {model_dir}", highlight=False, markup=False)
        return TrainResult(
            steps=result.steps, output_dir=str(run.output_dir), final_loss=result.final_loss,
            metrics=metrics, checkpoint=result.checkpoint,
        )


# ---------------------------------------------------------------------- data


def _prepare(run: Any) -> Any:
    """Prepare the shards; under torchrun rank 0 does it while the other ranks wait, then reuse it."""
    if getattr(run.config, "data", None) is None:
        raise ConfigError("trainer 'pretrain' needs a 'data' section (name: corpus, sources: [...])")
    from rung_pretrain.pipeline import prepare

    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return prepare(run)
    launch = os.environ.get("TORCHELASTIC_RUN_ID") or os.environ.get("MASTER_PORT", "")
    marker = Path(run.output_dir) / ".prepared"
    if rank == 0:
        try:
            data = prepare(run)
        except BaseException:
            _write(marker, f"{launch} failed")
            raise
        _write(marker, f"{launch} ok")
        return data
    while True:  # wait for rank 0 (its preparation can take minutes)
        state = marker.read_text(encoding="utf-8") if marker.is_file() else ""
        if state == f"{launch} ok":
            return prepare(run, progress=False)
        if state == f"{launch} failed":
            raise RungError("rank 0 could not prepare the data (see its error)")
        time.sleep(0.5)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _use_checkpoint_tokenizer(run: Any) -> Any:
    """Continue pretraining a checkpoint: its tokenizer is the one the data must be cut with.

    Returns that tokenizer (also handed to the run), or None when the model is a preset."""
    model = getattr(run.config.backend, "model", None)
    if not isinstance(model, str) or not Path(model).is_dir():
        return None
    folder = Path(model)
    if not (folder / "tokenizer.json").is_file():
        if run.config.tokenizer is None:
            raise ConfigError(
                f"backend.model: {folder} holds no tokenizer.json; add a 'tokenizer' section "
                f"(the one the checkpoint was trained with)"
            )
        return None
    if run.config.tokenizer is not None and getattr(run.config.tokenizer, "path", None):
        return None  # the config names a tokenizer file itself: trust it
    from rung_tokenizers.tokenizer import load_tokenizer

    if run.config.tokenizer is not None:
        from rung.console import get_console

        get_console().print(
            f"continuing {folder}: the data is tokenized with its tokenizer.json (the tokenizer section is not used)",
            highlight=False, markup=False,
        )
    tokenizer = load_tokenizer(folder)
    run.use_tokenizer(tokenizer)
    return tokenizer


_PROBE = "def main(argv=None):\n    \"\"\"Entry point.\"\"\"\n    return 0  # done, café\n"


def _check_same_tokenizer(expected: Any, data: Any) -> None:
    """Shards reused from an earlier preparation must have been cut with the model's tokenizer."""
    if expected.vocab_size != data.tokenizer.vocab_size or expected.encode(_PROBE) != data.tokenizer.encode(_PROBE):
        raise ConfigError(
            f"the token shards in {data.dir} were made with another tokenizer than the model's "
            f"(backend.model); point data.shards.dir elsewhere or run `rung prepare CONFIG --force`"
        )


class StepCounter:
    """A `BatchStream` around the reader's that knows the optimizer step (saved with it)."""

    def __init__(self, inner: Any, micro_per_step: int) -> None:
        self.inner = inner
        self.micro_per_step = max(1, int(micro_per_step))
        self.pulled = 0

    def __iter__(self) -> StepCounter:
        return self

    def __next__(self) -> Mapping[str, Any]:
        batch = next(self.inner)
        self.pulled += 1
        return batch

    @property
    def step(self) -> int:
        return self.pulled // self.micro_per_step

    def state_dict(self) -> dict[str, Any]:
        return {"reader": self.inner.state_dict(), "micro_batches": self.pulled}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if "reader" in state and "micro_batches" in state:
            self.inner.load_state_dict(state["reader"])
            self.pulled = int(state["micro_batches"])
        else:  # a checkpoint of the bare reader
            self.inner.load_state_dict(state)


class RecordingRun:
    """The run as the engine sees it, keeping every logged metric for the plot."""

    def __init__(self, run: Any, main: bool) -> None:
        self._run = run
        self._main = main
        self.records: list[dict[str, Any]] = []

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        self.records.append({"step": step, **metrics})
        self._run.log(step, metrics)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._run, name)


# ---------------------------------------------------------------------- objectives


class FrameworkParts:
    """What differs between frameworks: the objective and how to score a validation batch."""

    def __init__(self, framework: str, objective: Any, val_loss: Any) -> None:
        self.framework, self.objective, self.val_loss = framework, objective, val_loss


def _framework_parts(framework: str, backend: Any) -> FrameworkParts:
    if framework == "torch":
        return FrameworkParts("torch", torch_next_token_loss, _torch_val_loss)
    from rung_jax.objectives import next_token_loss

    return FrameworkParts("jax", next_token_loss, _jax_val_loss(next_token_loss))


def torch_next_token_loss(model: Any, batch: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Mean cross-entropy of each window's next tokens (`labels` are already shifted)."""
    import torch.nn.functional as F

    from rung_torch.modeling import forward_logits

    logits = forward_logits(model, batch["input_ids"])
    labels = batch["targets"]
    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
    return loss, {}


def _torch_val_loss(model: Any, batch: Mapping[str, Any]) -> tuple[float, int]:
    import numpy as np
    import torch
    import torch.nn.functional as F

    from rung_torch.modeling import forward_logits

    device = next(model.parameters()).device
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) if isinstance(v, np.ndarray) else v.to(device)
               for k, v in batch.items()}
    with torch.no_grad():
        logits = forward_logits(model, tensors["input_ids"])
        labels = tensors["targets"].reshape(-1)
        total = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels,
                                ignore_index=-100, reduction="sum")
    return float(total), int((labels != -100).sum())


def _jax_val_loss(objective: Any) -> Any:
    compiled: list[Any] = []

    def score(model: Any, batch: Mapping[str, Any]) -> tuple[float, int]:
        import numpy as np

        if not compiled:
            from flax import nnx

            compiled.append(nnx.jit(lambda m, b: objective(m, b)[0]))
        loss = compiled[0](model, {k: np.asarray(v) for k, v in batch.items()})
        labels = np.asarray(batch["targets"])
        count = int((labels != -100).sum())
        return float(loss) * count, count

    return score


# ---------------------------------------------------------------------- evaluation


class Evaluator:
    """`evaluate(model)`: validation loss and perplexity; text samples every `sample_every`."""

    def __init__(self, opts: PretrainOptions, parts: FrameworkParts, val: list, backend: Any,
                 run: RecordingRun, counter: StepCounter, main: bool, baseline: float | None = None,
                 sample_here: bool | None = None) -> None:
        self.opts, self.parts, self.val, self.backend = opts, parts, val, backend
        self.baseline = baseline
        self.sample_here = main if sample_here is None else sample_here
        self.run, self.counter, self.main = run, counter, main
        self.last: dict[str, float] | None = None
        self._sampled_at = -1

    def __call__(self, model: Any) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.val:
            total, count = 0.0, 0
            for batch in self.val:
                loss_sum, n = self.parts.val_loss(model, batch)
                total += loss_sum
                count += n
            if count:
                val_loss = total / count
                out = {"val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 50.0))}
                if self.baseline is not None:
                    out["unigram_loss"] = self.baseline
                self.last = dict(out)
        step = self.counter.step
        every = self.opts.sample_every
        # At the first evaluation in each new stretch of `sample_every` steps.
        if self.sample_here and every and self.opts.sample_prompts and step >= every and step // every != self._sampled_at:
            self._sampled_at = step // every
            samples = self.samples(self.opts.sample_tokens, model)
            if samples and self.main:
                self.run.log(step, {f"sample_{i}": prompt + text for i, (prompt, text) in enumerate(samples)})
        return out

    def samples(self, max_tokens: int, model: Any = None) -> list[tuple[str, str]]:
        """(prompt, continuation) for each sample prompt, from `model` (the weights the engine
        is training; the jax engine hands them to the backend only at the end) or the backend's."""
        opts = self.opts
        requests = [
            GenerationRequest(prompt=prompt, max_tokens=max_tokens, temperature=opts.sample_temperature,
                              top_k=opts.sample_top_k if opts.sample_temperature else None,
                              seed=int(getattr(self.run.config, "seed", 0) or 0) + i)
            for i, prompt in enumerate(opts.sample_prompts)
        ]
        held = getattr(self.backend, "model", None)
        swap = model is not None and self.parts.framework == "jax" and model is not held
        if swap:
            self.backend.model = model
        try:
            with _decode_precision(self.parts.framework):
                completions = self.backend.generate_batch(requests)
        finally:
            if swap:
                self.backend.model = held
        return [(prompt, c.text) for prompt, c in zip(opts.sample_prompts, completions)]


def _decode_precision(framework: str) -> Any:
    """Leave the engine's training autocast while decoding (the backend picks its own)."""
    import contextlib

    if framework != "torch":
        return contextlib.nullcontext()
    import torch

    stack = contextlib.ExitStack()
    for device_type in ("cpu", "cuda"):
        if torch.is_autocast_enabled(device_type):
            stack.enter_context(torch.autocast(device_type=device_type, enabled=False))
    return stack


# ---------------------------------------------------------------------- reporting


def _describe_model(console: Any, backend: Any, seq_len: int, opts: PretrainOptions) -> None:
    config = getattr(backend, "config", None)
    if config is None or not hasattr(config, "num_params"):
        return
    tokens = opts.steps * opts.grad_accum_steps * opts.batch_size * seq_len
    console.print(
        f"model: {config.num_params() / 1e6:.2f}M parameters ({config.n_layers} layers, dim {config.dim}, "
        f"vocabulary {config.vocab_size}); {opts.steps} steps x {opts.batch_size * opts.grad_accum_steps} x "
        f"{seq_len} tokens = {tokens / 1e6:.2f}M tokens per process",
        highlight=False, markup=False,
    )


def _summary(baseline: float | None, val_loss: float | None, train_loss: float | None) -> str:
    parts = []
    if baseline is not None:
        parts.append(f"unigram baseline {baseline:.4f} nats/token")
    if val_loss is not None:
        text = f"final validation loss {val_loss:.4f} (perplexity {math.exp(min(val_loss, 50.0)):.1f})"
        if baseline is not None:
            text += f", {abs(baseline - val_loss):.2f} nats {'below' if val_loss < baseline else 'ABOVE'} the baseline"
        parts.append(text)
    elif train_loss is not None:
        parts.append(f"final train loss {train_loss:.4f}")
    return "; ".join(parts)


def _print_samples(samples: list[tuple[str, str]], path: Path) -> None:
    """The final samples on stdout (the generated text is the output) and in samples.txt."""
    blocks = []
    for i, (prompt, text) in enumerate(samples):
        blocks.append(f"----- sample {i + 1} (prompt {prompt!r}) -----\n{prompt}{text}\n")
    body = "\n".join(blocks)
    path.write_text(body, encoding="utf-8")
    print(body, flush=True)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl, as the latest history: a restart or a resume that went
    back in steps replaces the records from that step on."""
    records: list[dict[str, Any]] = []
    last_step = -1
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        step = record.get("step")
        if not isinstance(step, int):
            continue
        if step < last_step:
            records = [r for r in records if r["step"] < step]
        records.append(record)
        last_step = step
    return records


def _metrics_file(run: Any) -> Path | None:
    for sink in getattr(run.config.logging, "sinks", []):
        if getattr(sink, "name", None) == "jsonl":
            path = Path(getattr(sink, "path", "metrics.jsonl"))
            return path if path.is_absolute() else Path(run.output_dir) / path
    return None


def _plot(run: Any, recorder: RecordingRun, baseline: float) -> Path | None:
    from rung_pretrain.plot import plot_losses

    path = _metrics_file(run)
    records = read_metrics(path) if path is not None and path.is_file() else recorder.records
    return plot_losses(records, Path(run.output_dir) / "loss.png", baseline=baseline,
                       title=f"{Path(run.output_dir).name}: pretraining loss")

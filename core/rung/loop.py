"""The training loop: the one copy of the bookkeeping every engine shares.

An engine's `fit(objective, batches, options, run, evaluate)` builds a `StepEngine` for that
one run (its framework's step, save, load and evaluation context) and calls `fit_loop`, which
owns everything else: the learning-rate schedule, resume, the cadence of logging, evaluation
and checkpoints, the metrics record, the progress bar, the NaN stop, the resume metadata and
the `TrainResult`. Pure Python: no framework is imported here.

Who calls what, in order (every process of a multi-process run calls the same, in step):

    engine.prepare()                      once: model on its devices, optimizer, sharding
    engine.resume(options.resume)         -> Resumed(step, path, state) or None; the loop
                                          puts `state` back (batch positions, tokens, metrics)
    each optimizer step:
        micro = next(batches) x grad_accum_steps     an ended stream is a RungError; a
                                                     RolloutStream: with engine.evaluation() as
                                                     model: batches.next_from(model)
        lr = options.learning_rate_at(step)          the one schedule: logged and applied
        read = engine.train_step(micro, lr)          forward, backward, clip, update with `lr`
        read() -> StepOutput                         the loop calls it one step late where it
                                                     can, so an asynchronous engine (jax) runs
                                                     step N+1 while the loop reads step N
    at a log step:   engine.flops_per_token(seq_len), engine.peak_flops(), engine.peak_memory_mb()
    at an eval step: with engine.evaluation() as model: evaluate(model)
    at a save step:  engine.weights_finite(), engine.gather(this rank's batch position),
                     engine.save(step, state) -> path
    engine.finish()                       on success: the trained weights into the model
    engine.close()                        always, also after an error

Cadence: step s (1-based, counted after its update) logs when `s % log_every == 0`, evaluates
when `s % eval_every == 0`, saves when `s % save_every == 0`; the last step always does all
three. A non-finite loss or gradient norm stops the run with a RungError naming the last good
checkpoint; weights that are not finite are never saved.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from rung.errors import RungError
from rung.records import TrainResult

if TYPE_CHECKING:
    from rung.context import RunContext
    from rung.interfaces import BatchStream, Evaluator
    from rung.training import TrainingOptions


@dataclass
class StepOutput:
    """The numbers of one optimizer step, as plain Python values (every process agrees on them)."""

    loss: float  # mean over the step's micro-batches and processes
    grad_norm: float  # before clipping
    tokens: int  # input tokens of the step, all processes together
    metrics: dict[str, float] = field(default_factory=dict)  # the objective's, mean over micro-batches
    compile_s: float = 0.0  # seconds this step spent compiling: logged once, left out of throughput
    overflow: bool = False  # fp16: the gradient scaler skipped this update (inf gradients are expected)


@dataclass
class Resumed:
    """A checkpoint the engine loaded: its step, where it is, and the loop's state saved in it."""

    step: int
    path: str
    state: dict[str, Any]


class StepEngine(Protocol):
    """What one framework supplies to `fit_loop` for one run (see the module docstring)."""

    rank: int
    is_main: bool  # rank 0: logs, prints and reports checkpoints

    def prepare(self) -> None:
        """Build what training needs: the model on its devices, the optimizer, the step."""

    def resume(self, resume: str) -> Resumed | None:
        """Load the checkpoint `resume` names ("auto", "never" or a path); None: start afresh."""

    def train_step(self, batches: list[Mapping[str, Any]], lr: float) -> Callable[[], StepOutput]:
        """One optimizer step over `batches` (the micro-batches) at learning rate `lr`.

        Returns a function that gives the step's numbers (it may wait for the device). A step
        whose loss or gradient norm is not finite must not change the weights when the engine
        can tell in time; the loop stops the run either way.
        """

    def evaluation(self) -> contextlib.AbstractContextManager[Any]:
        """The model with the current weights, in eval mode and without gradients."""

    def weights_finite(self) -> bool:
        """Whether every trainable weight is finite (on every process)."""

    def gather(self, value: Any) -> list[Any]:
        """Every process's JSON-able `value`, in rank order (a collective)."""

    def save(self, step: int, state: dict[str, Any]) -> str | Path:
        """Write a complete checkpoint of `step` holding the loop's JSON `state`; its path."""

    def flops_per_token(self, seq_len: int) -> float | None:
        """Training FLOPs per token at `seq_len`, for MFU; None when unknown."""

    def peak_flops(self) -> float | None:
        """The peak FLOP/s of every device the run trains on together; None when unknown."""

    def peak_memory_mb(self) -> float:
        """The most memory this process's devices held so far."""

    def finish(self) -> None:
        """Hand the trained weights to the model the caller holds."""

    def close(self) -> None:
        """Release what the run holds (checkpoint writers); called after errors too."""


def fit_loop(
    engine: StepEngine,
    batches: BatchStream,
    options: TrainingOptions,
    run: RunContext,
    evaluate: Evaluator | None = None,
) -> TrainResult:
    """Train `options.steps` optimizer steps through `engine`, resuming as `options.resume` says."""
    try:
        return _Loop(engine, batches, options, run, evaluate).run()
    finally:
        engine.close()


def run_evaluator(evaluation: contextlib.AbstractContextManager[Any], evaluate: Evaluator) -> dict[str, float]:
    """`evaluate(model)` inside an engine's evaluation context; its metrics as floats."""
    with evaluation as model:
        out = evaluate(model) or {}
    return {key: float(value) for key, value in out.items()}


class _Throughput:
    """Tokens and busy seconds since the last log; logging, evaluating, saving and compiling
    are left out."""

    def __init__(self) -> None:
        self.tokens, self.seconds, self.started = 0, 0.0, time.perf_counter()

    def add(self, out: StepOutput) -> None:
        self.tokens += out.tokens
        self.seconds -= out.compile_s

    def pause(self) -> None:
        self.seconds += time.perf_counter() - self.started

    def resume(self) -> None:
        self.started = time.perf_counter()

    def take(self) -> float:
        """Tokens per second of the window (paused), and a new window."""
        rate = self.tokens / self.seconds if self.seconds > 0 else 0.0
        self.tokens, self.seconds = 0, 0.0
        return rate


class _Loop:
    """One call of `fit_loop`: the bookkeeping state of a training run."""

    def __init__(self, engine: StepEngine, batches: BatchStream, options: TrainingOptions,
                 run: RunContext, evaluate: Evaluator | None) -> None:
        if getattr(options, "eval_tasks", None):  # every trainer's `eval_tasks:` (rung.evaluation)
            from rung.evaluation import tasks_evaluator

            evaluate = tasks_evaluator(run, options.eval_tasks, evaluate)
        self.engine, self.batches, self.opts, self.run_, self.evaluate = engine, batches, options, run, evaluate
        self.last_checkpoint: str | None = None
        self.metrics: dict[str, Any] = {}
        self.final_loss: float | None = None
        self.tokens_seen = 0
        self.compile_s = 0.0  # compile seconds not yet logged
        self.flops: float | None = None
        self.peak: float | None = None

    def run(self) -> TrainResult:
        self.engine.prepare()
        step = self.resume()
        if step < self.opts.steps:
            from rung.console import progress

            with progress(self.opts.steps, "training", unit="steps", start=step,
                          enabled=self.engine.is_main) as bar:
                step = self.train(step, bar)
        self.engine.finish()
        metrics = {k: float(v) for k, v in self.metrics.items() if isinstance(v, (int, float))}
        return TrainResult(steps=step, output_dir=str(self.run_.output_dir), final_loss=self.final_loss,
                           metrics=metrics, checkpoint=self.last_checkpoint)

    def train(self, step: int, bar: Any) -> int:
        opts, engine = self.opts, self.engine
        window = _Throughput()
        pending: tuple[int, Callable[[], StepOutput]] | None = None  # a step whose numbers are unread
        while step < opts.steps:
            lr = opts.learning_rate_at(step)
            micro = list(self.next_batches(step))
            read = engine.train_step(micro, lr)
            step += 1
            if pending is not None:  # the previous step's numbers, read while this one runs
                window.add(self.check(*pending))
            pending = (step, read)
            last = step == opts.steps
            log_now = step % opts.log_every == 0 or last
            eval_now = self.evaluate is not None and (bool(opts.eval_every and step % opts.eval_every == 0) or last)
            save_now = bool(opts.save_every and step % opts.save_every == 0) or last
            if not (log_now or eval_now or save_now):
                if engine.is_main and self.final_loss is not None:
                    bar.update(completed=step, info=f"loss {self.final_loss:.4f}")
                continue
            out = self.check(*pending)
            pending = None
            window.add(out)
            window.pause()
            logged: dict[str, Any] = {}
            if log_now:
                logged = self.record(out, lr, window.take(), micro)
            if eval_now:
                logged.update(run_evaluator(engine.evaluation(), self.evaluate))
            if logged:
                self.metrics.update(logged)
                if engine.is_main:
                    self.run_.log(step, logged)
            if engine.is_main:
                bar.update(completed=step, info=f"loss {out.loss:.4f}")
            if save_now:
                self.save(step)
            window.resume()
        return step

    def next_batches(self, step: int) -> Iterator[Mapping[str, Any]]:
        rollout = callable(getattr(self.batches, "next_from", None))  # rung.interfaces.RolloutStream
        for _ in range(self.opts.grad_accum_steps):
            try:
                if rollout:
                    with self.engine.evaluation() as model:
                        batch = self.batches.next_from(model)  # type: ignore[attr-defined]
                    yield batch
                else:
                    yield next(self.batches)
            except StopIteration:
                raise RungError(f"the batch stream ran out at step {step + 1} of {self.opts.steps}; "
                                "a trainer's stream must be endless") from None

    def check(self, step: int, read: Callable[[], StepOutput]) -> StepOutput:
        """One step's numbers; a loss or gradient norm that is not finite stops the run."""
        out = read()
        if not math.isfinite(out.loss):
            self.stop(f"loss became {out.loss} at step {step}")
        if not math.isfinite(out.grad_norm) and not out.overflow:
            self.stop(f"gradient norm became {out.grad_norm} at step {step}")
        self.final_loss = out.loss
        self.tokens_seen += out.tokens
        self.compile_s += out.compile_s
        return out

    def record(self, out: StepOutput, lr: float, tokens_per_s: float, micro: list[Mapping[str, Any]]) -> dict[str, Any]:
        """The metrics of a log step."""
        engine = self.engine
        ids = micro[-1].get("input_ids") if micro else None
        shape = getattr(ids, "shape", None)
        if self.flops is None and shape:
            self.flops = engine.flops_per_token(int(shape[-1]))
            self.peak = engine.peak_flops()
        logged: dict[str, Any] = {"loss": out.loss, "lr": lr, "grad_norm": out.grad_norm,
                                  "tokens_per_s": tokens_per_s}
        if self.flops and self.peak:
            logged["mfu"] = tokens_per_s * self.flops / self.peak
        logged["peak_mem_mb"] = engine.peak_memory_mb()
        logged["tokens"] = float(self.tokens_seen)
        if self.compile_s:
            logged["compile_s"] = self.compile_s
            self.compile_s = 0.0
        logged.update(out.metrics)
        return logged

    def stop(self, what: str) -> None:
        where = (f"the last good checkpoint is {self.last_checkpoint}" if self.last_checkpoint
                 else "no checkpoint was written")
        raise RungError(f"{what}; {where} (lower trainer.learning_rate or set trainer.grad_clip)")

    # -- checkpoints

    def save(self, step: int) -> None:
        engine = self.engine
        if not engine.weights_finite():
            self.stop(f"a weight is not finite after step {step}, so it was not saved")
        state = {"data": engine.gather(self.batches.state_dict()), "tokens_seen": self.tokens_seen,
                 "final_loss": self.final_loss, "metrics": self.metrics}
        path = str(engine.save(step, state))
        self.last_checkpoint = path
        if engine.is_main:
            self.run_.checkpointed(step, path)

    def resume(self) -> int:
        found = self.engine.resume(str(self.opts.resume))
        if found is None:
            # A fresh start supersedes whatever an earlier run logged in this folder after step 0
            # (a `resume: never` run, or one whose checkpoints are gone): its metrics are its own.
            if self.engine.is_main and callable(getattr(self.run_, "resumed", None)):
                self.run_.resumed(0)
            return 0
        state = found.state
        self.batches.load_state_dict(state["data"][self.engine.rank])
        self.tokens_seen = int(state.get("tokens_seen", 0))
        self.final_loss = state.get("final_loss")
        self.metrics = dict(state.get("metrics") or {})
        self.last_checkpoint = found.path
        if self.engine.is_main:
            from rung.console import get_console

            get_console().print(f"resuming from {found.path} (step {found.step})", highlight=False, markup=False)
            if callable(getattr(self.run_, "resumed", None)):  # sinks drop what the killed attempt logged after
                self.run_.resumed(found.step)
        return found.step

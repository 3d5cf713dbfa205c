"""`JaxEngine`: jax's step, checkpoints and evaluation context under the core's loop (`rung.loop`).

`engine.fit(objective, batches, options, run, evaluate=None)`, with `objective(model, batch)
-> (loss, metrics)` a pure jax function of an NNX model and a dict of arrays. The whole
optimizer step (forward, backward over `grad_accum_steps` micro-batches with `lax.scan`,
clipping, AdamW at the loop's learning rate) is one jitted function over a (data, fsdp,
tensor) device mesh, with parameters and batches placed by NamedShardings; it is dispatched
asynchronously, so the loop reads step N's numbers while step N+1 runs. Checkpoints are Orbax
(atomic: written to a temporary folder, renamed when complete) holding parameters, optimizer
state, the step and the loop's state (every process's batch-stream position), so a killed run
resumes on the same losses.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from rung.errors import RungError
from rung.loop import Resumed, StepOutput, fit_loop, run_evaluator
from rung.records import TrainResult
from rung_jax import runtime


def build_optimizer(options: Any) -> optax.GradientTransformation:
    """Clipping (when set) then AdamW (matrices decay, vectors, norm weights, do not), or with
    `options.optimizer: muon` Muon for the hidden matrices and that AdamW for the rest
    (`rung_jax.muon`, rung-torch's Muon step for step).

    The learning rate is a hyperparameter in the optimizer state (`opt_state.hyperparams`)
    that each step sets to the rate the core's loop computed and logs: no second schedule.
    Muon moves at that rate times muon_lr / learning_rate, so it follows the same schedule.
    """
    name = getattr(options, "optimizer", None) or "adamw"
    if name not in ("adamw", "muon"):
        raise RungError(f"trainer.optimizer: '{name}' is not one of adamw, muon")
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)  # noqa: E731
    if name == "muon":
        from rung_jax.muon import muon_with_adamw

        ratio = float(getattr(options, "muon_lr", None) or 0.02) / options.learning_rate
        momentum = float(getattr(options, "muon_momentum", None) or 0.95)
        # bf16 Newton-Schulz on accelerators, fp32 on a CPU: as rung-torch
        ns_dtype = jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16

    def make(learning_rate):
        opt = optax.adamw(learning_rate, b1=options.betas[0], b2=options.betas[1], eps=1e-8,
                          weight_decay=options.weight_decay, mask=decay_mask)
        if name == "muon":  # AdamW keeps the embeddings, head and norms
            opt = muon_with_adamw(opt, learning_rate * ratio, momentum=momentum, weight_decay=options.weight_decay,
                                  ns_dtype=ns_dtype)
        return optax.chain(optax.clip_by_global_norm(options.grad_clip), opt) if options.grad_clip else opt

    return optax.inject_hyperparams(make)(learning_rate=options.learning_rate)


def trainable_filter(model: nnx.Module) -> Any:
    """LoRA adapters (and a score head: rung_jax.scoring) when the model has some (the base stays
    frozen), else every parameter."""
    if any(True for _ in nnx.to_flat_state(nnx.state(model, nnx.LoRAParam))):
        return nnx.Any(nnx.LoRAParam, nnx.All(nnx.Param, nnx.PathContains("score")))
    return nnx.Param


class JaxEngine:
    """Trains an NNX model with a pure jax objective: `engine.fit(objective, batches, options, run)`.

    Built with the backend (the model is read from `backend.model` when `fit` starts, so a
    trainer may first add LoRA adapters) or with a model and options. `rank`/`world_size` are
    the JAX process index and count (multi-host: one process per host). The loop's
    bookkeeping is the core's (`rung.loop.fit_loop`); this file holds jax's side of it.
    """

    framework = "jax"

    def __init__(self, owner: Any, options: Any = None, mesh: Any = None, precision: str | None = None):
        self.owner = owner
        backend = None if isinstance(owner, nnx.Module) else owner
        self.options = options if options is not None else getattr(backend, "options", None)
        runtime.initialize_distributed(getattr(self.options, "distributed", None))
        self.rank, self.world_size = jax.process_index(), jax.process_count()
        if mesh is None:
            mesh = getattr(backend, "mesh", None) or runtime.make_mesh(
                getattr(self.options, "mesh", None),
                runtime.select_devices(getattr(self.options, "device", "auto")))
        self.mesh = mesh
        platform = self.mesh.devices.flat[0].platform
        self.precision = runtime.resolve_precision(
            precision or getattr(self.options, "precision", "auto"), platform, "train")
        self._steps: _JaxSteps | None = None  # the fit in progress

    @property
    def model(self) -> nnx.Module:
        """The model the backend holds (or the one the engine was built with)."""
        return self.owner if isinstance(self.owner, nnx.Module) else self.owner.model

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def fit(self, objective, batches, options, run, evaluate=None) -> TrainResult:
        """Train `options.steps` optimizer steps of `objective`, resuming as `options.resume` says."""
        self._steps = _JaxSteps(self, objective, options, run)
        try:
            return fit_loop(self._steps, batches, options, run, evaluate)
        finally:
            self._steps = None

    @contextlib.contextmanager
    def evaluation(self) -> Iterator[nnx.Module]:
        """`engine.model` holding the current weights, in eval mode (`deterministic` modules).

        During `fit` the model is updated with the weights of the step just taken, so an
        evaluator may also generate through the backend. The next step donates those buffers
        and the model holds stale ones again until the next evaluation or the end of `fit`.
        JAX computes gradients only where asked: nothing to switch off.
        """
        model = self.model
        if self._steps is not None and self._steps.params is not None:
            nnx.update(model, self._steps.params)
        saved = _modes(model)
        model.eval()
        try:
            yield model
        finally:
            for module, name, value in saved:
                setattr(module, name, value)

    def evaluate(self, evaluator) -> dict[str, float]:
        """`evaluator(model)` in the evaluation context (as `fit` runs it every `eval_every`)."""
        return run_evaluator(self.evaluation(), evaluator)


class _JaxSteps:
    """jax's half of one `fit` (`rung.loop.StepEngine`): one jitted optimizer step over the
    mesh, Orbax checkpoints, the evaluation context."""

    def __init__(self, engine: JaxEngine, objective, options, run) -> None:
        self.engine, self.objective, self.opts, self.run_ = engine, objective, options, run
        self.rank, self.is_main = engine.rank, engine.is_main
        self.mesh = engine.mesh
        self.root = Path(run.output_dir).absolute() / "checkpoints"
        self.params = None
        self._manager = None

    # ------------------------------------------------------------------ the step

    def prepare(self) -> None:
        model = self.engine.model
        if hasattr(model, "activation_checkpointing"):
            model.activation_checkpointing = bool(getattr(self.engine.options, "activation_checkpointing", False))
        model.train()  # the step's graph is split from the model in training mode
        self.graphdef, params, rest = nnx.split(model, trainable_filter(model), ...)
        self.params = runtime.shard_state(params, self.mesh)
        self.rest = runtime.shard_state(rest, self.mesh)
        self.tx = build_optimizer(self.opts)
        with jax.sharding.use_mesh(self.mesh) if hasattr(jax.sharding, "use_mesh") else contextlib.nullcontext():
            self.opt_state = jax.jit(self.tx.init)(self.params)
        replicated = NamedSharding(self.mesh, P())
        self.opt_state = jax.tree.map(
            lambda x: x if isinstance(x.sharding, NamedSharding) else jax.device_put(x, replicated), self.opt_state)
        shardings = lambda tree: jax.tree.map(lambda x: x.sharding, tree)  # noqa: E731
        low = runtime.DTYPES[self.engine.precision]
        graphdef, objective, tx = self.graphdef, self.objective, self.tx

        def cast(tree):
            return jax.tree.map(lambda x: x.astype(low) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)

        def loss_fn(params, rest, micro):
            model = nnx.merge(graphdef, cast(params), cast(rest))
            loss, metrics = objective(model, micro)
            metrics = {k: jnp.asarray(v, jnp.float32) for k, v in dict(metrics or {}).items()}
            return jnp.asarray(loss, jnp.float32), metrics

        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

        def step_fn(params, opt_state, rest, batch, lr):
            accum = next(iter(batch.values())).shape[0]
            if accum == 1:
                (loss, metrics), grads = grad_fn(params, rest, jax.tree.map(lambda x: x[0], batch))
            else:  # one traced copy of the backward pass, scanned over the micro-batches
                def body(carry, micro):
                    out = grad_fn(params, rest, micro)
                    return jax.tree.map(jnp.add, carry, out), None

                shapes = jax.eval_shape(grad_fn, params, rest, jax.tree.map(lambda x: x[0], batch))
                zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
                ((loss, metrics), grads), _ = jax.lax.scan(body, zeros, batch)
                loss, grads = loss / accum, jax.tree.map(lambda g: g / accum, grads)
                metrics = {k: v / accum for k, v in metrics.items()}
            grad_norm = optax.global_norm(grads)
            # The loop's rate, exactly (as float32): what it logs is what AdamW applies.
            opt_state = opt_state._replace(hyperparams={**opt_state.hyperparams, "learning_rate": lr})
            updates, opt_state = tx.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            return params, opt_state, {**metrics, "loss": loss, "grad_norm": grad_norm}

        self.step_fn = jax.jit(step_fn, donate_argnums=(0, 1),
                               out_shardings=(shardings(self.params), shardings(self.opt_state), replicated))
        self.compiled = None
        self.all_finite = jax.jit(
            lambda tree: jnp.all(jnp.stack([jnp.isfinite(x).all() for x in jax.tree.leaves(tree)])))

    def train_step(self, batches, lr: float):
        """Dispatch one step and return at once: its numbers are read when the loop asks."""
        keys = [k for k, v in batches[0].items() if isinstance(v, (np.ndarray, jax.Array)) or np.ndim(v) > 0]
        stacked = {k: np.stack([np.asarray(m[k]) for m in batches]) for k in keys}  # [A, B, ...]
        ids = stacked.get("input_ids")
        tokens = int(ids.size) * self.engine.world_size if ids is not None else 0
        batch = runtime.global_batch(stacked, self.mesh, leading=1)
        rate = np.float32(lr)
        compile_s = 0.0
        if self.compiled is None:
            started = time.perf_counter()
            self.compiled = self.step_fn.lower(self.params, self.opt_state, self.rest, batch, rate).compile()
            compile_s = time.perf_counter() - started
        self.params, self.opt_state, out = self.compiled(self.params, self.opt_state, self.rest, batch, rate)

        def read() -> StepOutput:
            values = {k: float(v) for k, v in jax.device_get(out).items()}
            loss, grad_norm = values.pop("loss"), values.pop("grad_norm")
            return StepOutput(loss=loss, grad_norm=grad_norm, tokens=tokens, metrics=values, compile_s=compile_s)

        return read

    def evaluation(self):
        return self.engine.evaluation()

    def weights_finite(self) -> bool:
        return bool(self.all_finite(self.params))

    def gather(self, value: Any) -> list[Any]:
        return _allgather_json(value)

    def flops_per_token(self, seq_len: int) -> float | None:
        return _flops_per_token(self.engine.model, seq_len)

    def peak_flops(self) -> float | None:
        return runtime.peak_flops(list(self.mesh.devices.flat), self.engine.precision)

    def peak_memory_mb(self) -> float:
        return runtime.peak_memory_mb(list(self.mesh.devices.flat))

    def finish(self) -> None:
        """Hand the trained weights back to the model the backend holds.

        Multi-host: the weights are gathered whole onto every host first, so process 0 alone
        can save or sample from them (a trainer saves the final model from rank 0 only).
        """
        params = self.params
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            params = jax.tree.map(jnp.asarray, multihost_utils.process_allgather(params, tiled=True))
        nnx.update(self.engine.model, params)

    # ------------------------------------------------------------------ checkpoints

    def manager(self, root: Path | None = None):
        import orbax.checkpoint as ocp

        if root is not None and root != self.root:
            return ocp.CheckpointManager(root, options=ocp.CheckpointManagerOptions(read_only=True))
        if self._manager is None:
            self._manager = ocp.CheckpointManager(self.root, options=ocp.CheckpointManagerOptions(
                max_to_keep=self.opts.keep_checkpoints, enable_async_checkpointing=False, create=True))
        return self._manager

    def close(self) -> None:
        if self._manager is not None:
            self._manager.wait_until_finished()
            self._manager.close()
            self._manager = None

    def save(self, step: int, state: dict[str, Any]) -> Path:
        """Write checkpoint `step` through orbax. A full disk is one line (`rung.disk.writing`):
        orbax's temporary folder is removed and the previous checkpoint is untouched; orbax's
        own error logs for it are held back meanwhile (the one line says it all)."""
        import orbax.checkpoint as ocp

        from rung.disk import writing

        manager = self.manager()
        final = self.root / str(step)
        earlier = [s for s in manager.all_steps() if s != step]
        kept = (f"the previous checkpoint {self.root / str(max(earlier))} is kept" if earlier
                else "no earlier checkpoint")
        needed = sum(getattr(x, "nbytes", 0) for x in jax.tree.leaves((self.params, self.opt_state)))

        def temporary() -> list[Path]:
            return [*self.root.glob(f"{step}.orbax-checkpoint-tmp*"), *([final] if final.exists() else [])]

        with writing(final, needed, remove=temporary, note=kept), _orbax_errors_held():
            if step in manager.all_steps():  # resume: never over an old run's folder
                manager.delete(step)
            meta = {"format": "rung-jax-checkpoint/2", "step": step, "world_size": self.engine.world_size,
                    "precision": self.engine.precision, "loop": state}
            manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave({"params": self.params, "opt_state": self.opt_state}),
                meta=ocp.args.JsonSave(meta)))
            manager.wait_until_finished()
            if jax.process_index() == 0:  # every file's SHA-256, checked before a resume trusts it
                from rung.checkpoint_files import write_manifest

                write_manifest(final)
        return final

    def find(self, resume: str) -> tuple[Path, int] | None:
        """The checkpoint `resume` names: (manager root, step), or None."""
        if resume == "never":
            return None
        from rung.checkpoint_files import manifest_damage, pick

        if resume == "auto":
            if not self.root.is_dir():
                return None
            steps = sorted(self.manager().all_steps(), reverse=True)
            chosen = pick([self.root / str(s) for s in steps], manifest_damage, self.root)
            return (self.root, int(chosen.name)) if chosen is not None else None
        path = Path(resume).absolute()
        if path.name.isdigit() and (path / "meta").exists():
            problem = manifest_damage(path)
            if problem is not None:
                raise RungError(f"trainer.resume: checkpoint {path} is damaged: {problem}")
            return path.parent, int(path.name)
        if path.is_dir():
            steps = sorted(self.manager(path).all_steps(), reverse=True)
            chosen = pick([path / str(s) for s in steps], manifest_damage, path)
            if chosen is not None:
                return path, int(chosen.name)
        raise RungError(f"trainer.resume: no rung-jax checkpoint at {resume}")

    def resume(self, resume: str) -> Resumed | None:
        import orbax.checkpoint as ocp

        found = self.find(resume)
        if found is None:
            return None
        root, step = found
        where = root / str(step)
        manager = self.manager(root)
        meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
        if meta.get("world_size", 1) != self.engine.world_size:
            raise RungError(f"checkpoint {where} was written by {meta.get('world_size')} processes "
                            f"and this run has {self.engine.world_size}; resume with the same number or "
                            f"resume: never")
        if "loop" not in meta:
            raise RungError(f"checkpoint {where} was written by an older rung-jax (before the learning rate "
                            f"moved into the optimizer state); resume: never starts afresh")
        target = {"params": self.params, "opt_state": self.opt_state}
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), target)
        try:
            state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))).state
        except Exception as exc:  # noqa: BLE001 - a different model or optimizer
            raise RungError(f"checkpoint {where} does not fit this model and optimizer: {exc}") from exc
        self.params, self.opt_state = state["params"], state["opt_state"]
        return Resumed(step=int(meta["step"]), path=str(where), state=meta["loop"])


# ---------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _orbax_errors_held():
    """While orbax saves: its ERROR log lines (absl) are held back, and a failed save's
    leftovers (coroutines and callbacks of an event loop it closed) are collected here, quietly,
    rather than printed as tracebacks at exit. What failed still raises from `save`."""
    import gc
    import logging

    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.CRITICAL)
    try:
        yield
    except BaseException:
        # tensorstore's threads still call back into the loop orbax closed; each such call
        # would print a traceback through sys.excepthook, now and until the process exits
        sys.excepthook = _closed_loop_callbacks_dropped(sys.excepthook)
        hook = sys.unraisablehook
        sys.unraisablehook = lambda unraisable: None
        try:
            gc.collect()
        finally:
            sys.unraisablehook = hook
        raise
    finally:
        absl.setLevel(level)


def _closed_loop_callbacks_dropped(hook):
    def excepthook(kind, value, traceback):
        if not (kind is RuntimeError and str(value) == "Event loop is closed"):
            hook(kind, value, traceback)

    return excepthook


def _modes(model: nnx.Module) -> list[tuple[nnx.Module, str, Any]]:
    """(module, attribute, value) of every train/eval switch in `model` (nnx's `deterministic`
    and `use_running_average`), to put back after evaluation."""
    return [(module, name, getattr(module, name)) for _, module in nnx.iter_graph(model)
            if isinstance(module, nnx.Module)
            for name in ("deterministic", "use_running_average") if hasattr(module, name)]


def _flops_per_token(model: Any, seq_len: int) -> float:
    config = getattr(model, "config", None)
    if hasattr(config, "flops_per_token"):
        return float(config.flops_per_token(seq_len))
    n = sum(int(np.prod(v.get_value().shape)) for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param)))
    return 6.0 * n


def _allgather_json(value: Any) -> list[Any]:
    """Every process's JSON-serialisable value, in process order."""
    if jax.process_count() == 1:
        return [value]
    from jax.experimental import multihost_utils

    raw = np.frombuffer(json.dumps(value).encode(), dtype=np.uint8)
    size = int(np.max(multihost_utils.process_allgather(np.array([raw.size]))))
    padded = np.zeros(size, np.uint8)
    padded[: raw.size] = raw
    gathered = multihost_utils.process_allgather(padded)
    return [json.loads(bytes(row).rstrip(b"\0").decode()) for row in np.asarray(gathered).reshape(-1, size)]

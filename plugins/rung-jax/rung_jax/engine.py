"""`JaxEngine`: the training loop every trainer runs on when `backend.framework == "jax"`.

`engine.fit(objective, batches, options, run, evaluate=None)`, with `objective(model, batch)
-> (loss, metrics)` a pure jax function of an NNX model and a dict of arrays. The whole
optimizer step (forward, backward over `grad_accum_steps` micro-batches with `lax.scan`,
clipping, AdamW) is one jitted function over a (data, fsdp, tensor) device mesh, with
parameters and batches placed by NamedShardings. Checkpoints are Orbax (atomic: written to a
temporary folder, renamed when complete) holding parameters, optimizer state, the step and
every process's batch-stream position, so a killed run resumes on the same losses.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from rung.console import progress
from rung.errors import RungError
from rung.records import TrainResult
from rung.training import warmup_cosine
from rung_jax import runtime


class CosineSchedule:
    """Linear warm-up to the peak over `warmup_steps`, then cosine down to `min_lr_ratio * peak`.

    The same rates as rung-torch's schedule: `lr(step)` is the rate of optimizer step `step`
    (0-based); step 0 of a warm-up of W steps uses peak/W, the last step `min_lr_ratio * peak`.
    Callable on a traced step count too (optax calls it with the update count).
    """

    def __init__(self, peak: float, steps: int, warmup_steps: int = 0, min_lr_ratio: float = 0.1) -> None:
        self.peak, self.steps, self.warmup, self.min_ratio = peak, steps, warmup_steps, min_lr_ratio

    @classmethod
    def from_options(cls, options: Any) -> "CosineSchedule":
        return cls(options.learning_rate, options.steps, options.warmup_steps, options.min_lr_ratio)

    def __call__(self, step):
        step = jnp.asarray(step, jnp.float32)
        peak, floor = self.peak, self.peak * self.min_ratio
        warm = peak * (step + 1) / max(self.warmup, 1)
        decay_steps = self.steps - self.warmup - 1
        if decay_steps <= 0:
            cosine = jnp.full_like(step, peak)
        else:
            progress = jnp.clip((step - self.warmup) / decay_steps, 0.0, 1.0)
            cosine = floor + (peak - floor) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
        return jnp.where(step < self.warmup, warm, cosine)

    def lr(self, step: int) -> float:
        return warmup_cosine(step, self.peak, self.steps, self.warmup, self.min_ratio)


def build_optimizer(options: Any) -> optax.GradientTransformation:
    """Clipping (when set) then AdamW; matrices decay, vectors (norm weights) do not."""
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)  # noqa: E731
    adamw = optax.adamw(CosineSchedule.from_options(options), b1=options.betas[0], b2=options.betas[1],
                        eps=1e-8, weight_decay=options.weight_decay, mask=decay_mask)
    if options.grad_clip:
        return optax.chain(optax.clip_by_global_norm(options.grad_clip), adamw)
    return adamw


def trainable_filter(model: nnx.Module) -> Any:
    """LoRA adapters when the model has some (the base stays frozen), else every parameter."""
    if any(True for _ in nnx.to_flat_state(nnx.state(model, nnx.LoRAParam))):
        return nnx.LoRAParam
    return nnx.Param


class JaxEngine:
    """Trains an NNX model with a pure jax objective: `engine.fit(objective, batches, options, run)`.

    Built with the backend (the model is read from `backend.model` when `fit` starts, so a
    trainer may first add LoRA adapters) or with a model and options. `rank`/`world_size` are
    the JAX process index and count (multi-host: one process per host).
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

    @property
    def model(self) -> nnx.Module:
        return self.owner if isinstance(self.owner, nnx.Module) else self.owner.model

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def fit(self, objective, batches, options, run, evaluate=None) -> TrainResult:
        """Train `options.steps` optimizer steps of `objective`, resuming as `options.resume` says."""
        return _Fit(self, objective, batches, options, run, evaluate).run()


class _Fit:
    """One call of `JaxEngine.fit`."""

    def __init__(self, engine: JaxEngine, objective, batches, options, run, evaluate) -> None:
        self.engine, self.objective, self.batches = engine, objective, batches
        self.opts, self.run_, self.evaluate = options, run, evaluate
        self.mesh = engine.mesh
        self.root = Path(run.output_dir).absolute() / "checkpoints"
        self.last_checkpoint: str | None = None
        self.metrics: dict[str, float] = {}
        self.final_loss: float | None = None
        self.tokens_seen = 0
        self.compile_s: float | None = None
        self._manager = None

    # ------------------------------------------------------------------ the step

    def build(self) -> None:
        model = self.engine.model
        if hasattr(model, "activation_checkpointing"):
            model.activation_checkpointing = bool(getattr(self.engine.options, "activation_checkpointing", False))
        self.graphdef, params, rest = nnx.split(model, trainable_filter(model), ...)
        self.params = runtime.shard_state(params, self.mesh)
        self.rest = runtime.shard_state(rest, self.mesh)
        self.tx = build_optimizer(self.opts)
        self.schedule = CosineSchedule.from_options(self.opts)
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

        def step_fn(params, opt_state, rest, batch):
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
            updates, opt_state = tx.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            return params, opt_state, {**metrics, "loss": loss, "grad_norm": grad_norm}

        self.step_fn = jax.jit(step_fn, donate_argnums=(0, 1),
                               out_shardings=(shardings(self.params), shardings(self.opt_state), replicated))
        self.compiled = None

    def next_batch(self) -> tuple[dict[str, jax.Array], int, int]:
        """`grad_accum_steps` micro-batches stacked [A, B, ...], on the mesh; tokens, seq_len."""
        micro = [next(self.batches) for _ in range(self.opts.grad_accum_steps)]
        keys = [k for k, v in micro[0].items() if isinstance(v, (np.ndarray, jax.Array)) or np.ndim(v) > 0]
        stacked = {k: np.stack([np.asarray(m[k]) for m in micro]) for k in keys}
        ids = stacked.get("input_ids")
        tokens = int(ids.size) * self.engine.world_size if ids is not None else 0
        seq_len = int(ids.shape[-1]) if ids is not None else 0
        return runtime.global_batch(stacked, self.mesh, leading=1), tokens, seq_len

    # ------------------------------------------------------------------ the loop

    def run(self) -> TrainResult:
        opts, engine = self.opts, self.engine
        self.build()
        step = self.resume()
        if step >= opts.steps:  # already trained: the model still gets the checkpoint's weights
            self.finish()
            return self.result(step)
        peak = runtime.peak_flops(list(self.mesh.devices.flat), engine.precision)
        flops_token: float | None = None
        window_tokens, window_start = 0, None
        pending: tuple[int, Any, float] | None = None
        with progress(opts.steps, "training", unit="steps", start=step, enabled=engine.is_main) as bar:
            while step < opts.steps:
                batch, tokens, seq_len = self.next_batch()
                if self.compiled is None:
                    started = time.perf_counter()
                    self.compiled = self.step_fn.lower(self.params, self.opt_state, self.rest, batch).compile()
                    self.compile_s = time.perf_counter() - started
                if window_start is None:
                    window_start = time.perf_counter()
                lr = self.schedule.lr(step)
                self.params, self.opt_state, out = self.compiled(self.params, self.opt_state, self.rest, batch)
                step += 1
                self.tokens_seen += tokens
                window_tokens += tokens
                if pending is not None:  # the previous step's numbers, read while this one runs
                    self.check(*pending)
                pending = (step, out, lr)
                log_now = step % opts.log_every == 0 or step == opts.steps
                eval_now = self.evaluate is not None and (
                    (opts.eval_every and step % opts.eval_every == 0) or step == opts.steps)
                save_now = bool(opts.save_every and step % opts.save_every == 0) or step == opts.steps
                if not (log_now or eval_now or save_now):
                    continue
                values = self.check(*pending)
                pending = None
                logged: dict[str, float] = {}
                if log_now:
                    now = time.perf_counter()
                    tps = window_tokens / (now - window_start) if now > window_start else 0.0
                    window_tokens, window_start = 0, now
                    if flops_token is None and seq_len:
                        flops_token = _flops_per_token(engine.model, seq_len)
                    logged = {"loss": values["loss"], "lr": lr, "grad_norm": values["grad_norm"],
                              "tokens_per_s": tps}
                    if peak and flops_token:
                        logged["mfu"] = tps * flops_token / peak
                    logged["peak_mem_mb"] = runtime.peak_memory_mb(list(self.mesh.devices.flat))
                    logged["tokens"] = float(self.tokens_seen)
                    if self.compile_s is not None:
                        logged["compile_s"] = self.compile_s
                        self.compile_s = None
                    logged.update({k: v for k, v in values.items() if k not in ("loss", "grad_norm")})
                if eval_now:
                    logged.update(self.run_evaluate())
                if logged:
                    self.metrics.update(logged)
                    if engine.is_main:
                        self.run_.log(step, logged)
                if engine.is_main:
                    bar.update(completed=step, info=f"loss {values['loss']:.4f}")
                if save_now:
                    self.save(step)
                window_start = time.perf_counter() if log_now or eval_now or save_now else window_start
        self.finish()
        return self.result(step)

    def check(self, step: int, out: Any, lr: float) -> dict[str, float]:
        """Fetch one step's numbers; a NaN or inf loss (or gradient) stops the run."""
        values = {k: float(v) for k, v in jax.device_get(out).items()}
        for what, key in (("loss", "loss"), ("gradient norm", "grad_norm")):
            if not math.isfinite(values[key]):
                self.stop(what, values[key], step)
        self.final_loss = values["loss"]
        return values

    def stop(self, what: str, value: float, step: int) -> None:
        where = (f"the last good checkpoint is {self.last_checkpoint}" if self.last_checkpoint
                 else "no checkpoint was written")
        self.close()
        raise RungError(f"{what} became {value} at step {step}; {where} "
                        f"(lower trainer.learning_rate or set trainer.grad_clip)")

    def current_model(self) -> nnx.Module:
        return nnx.merge(self.graphdef, self.params, self.rest)

    def run_evaluate(self) -> dict[str, float]:
        out = self.evaluate(self.current_model()) or {}
        return {key: float(value) for key, value in out.items()}

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
        self.close()

    def result(self, step: int) -> TrainResult:
        metrics = {k: float(v) for k, v in self.metrics.items() if isinstance(v, (int, float))}
        return TrainResult(steps=step, output_dir=str(self.run_.output_dir), final_loss=self.final_loss,
                           metrics=metrics, checkpoint=self.last_checkpoint)

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

    def save(self, step: int) -> None:
        import orbax.checkpoint as ocp

        manager = self.manager()
        if step in manager.all_steps():  # resume: never over an old run's folder
            manager.delete(step)
        data = _allgather_json(self.batches.state_dict())
        meta = {"format": "rung-jax-checkpoint/1", "step": step, "world_size": self.engine.world_size,
                "data": data, "tokens_seen": self.tokens_seen, "final_loss": self.final_loss,
                "metrics": self.metrics, "precision": self.engine.precision}
        manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave({"params": self.params, "opt_state": self.opt_state}),
            meta=ocp.args.JsonSave(meta)))
        manager.wait_until_finished()
        path = self.root / str(step)
        self.last_checkpoint = str(path)
        if self.engine.is_main:
            self.run_.checkpointed(step, path)

    def find(self) -> tuple[Path, int] | None:
        """The checkpoint `options.resume` names: (manager root, step), or None."""
        resume = str(self.opts.resume)
        if resume == "never":
            return None
        if resume == "auto":
            if not self.root.is_dir():
                return None
            step = self.manager().latest_step()
            return (self.root, step) if step is not None else None
        path = Path(resume).absolute()
        if path.name.isdigit() and (path / "meta").exists():
            return path.parent, int(path.name)
        if path.is_dir():
            step = self.manager(path).latest_step()
            if step is not None:
                return path, step
        raise RungError(f"trainer.resume: no rung-jax checkpoint at {resume}")

    def resume(self) -> int:
        import orbax.checkpoint as ocp

        found = self.find()
        if found is None:
            return 0
        root, step = found
        manager = self.manager(root)
        meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
        if meta.get("world_size", 1) != self.engine.world_size:
            raise RungError(f"checkpoint {root / str(step)} was written by {meta.get('world_size')} processes "
                            f"and this run has {self.engine.world_size}; resume with the same number or "
                            f"resume: never")
        target = {"params": self.params, "opt_state": self.opt_state}
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), target)
        try:
            state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))).state
        except Exception as exc:  # noqa: BLE001 - a different model or optimizer
            raise RungError(f"checkpoint {root / str(step)} does not fit this model and optimizer: {exc}") from exc
        self.params, self.opt_state = state["params"], state["opt_state"]
        self.batches.load_state_dict(meta["data"][self.engine.rank])
        self.tokens_seen = int(meta.get("tokens_seen", 0))
        self.final_loss = meta.get("final_loss")
        self.metrics = dict(meta.get("metrics") or {})
        self.last_checkpoint = str(root / str(step))
        if self.engine.is_main:
            from rung.console import get_console

            get_console().print(f"resuming from {root / str(step)} (step {step})", highlight=False, markup=False)
        return int(meta["step"])


# ---------------------------------------------------------------------- helpers


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

"""Subprocess entry points of the jax tests: `python -m tests.jax.scripts COMMAND OUT ...`.

Run with the environment of the `jax_env` fixture (4 simulated CPU devices).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

VOCAB, BATCH, SEQ = 64, 8, 32


def _model():
    from rung.model_config import preset
    from rung_jax.model import init_model

    return init_model(preset("test", vocab_size=VOCAB, n_layers=2), seed=0)


def _options(**kw):
    from rung.training import TrainingOptions

    base = dict(steps=3, log_every=1, learning_rate=3e-3, warmup_steps=1, grad_accum_steps=2, resume="never")
    return TrainingOptions(**{**base, **kw})


def sharded(out: Path) -> None:
    """Train 3 steps on one device and on a 2x2 (fsdp x tensor) mesh; write both results."""
    import jax
    import numpy as np
    from flax import nnx

    from rung_jax import runtime
    from rung_jax.engine import JaxEngine
    from rung_jax.objectives import next_token_loss
    from tests.jax.helpers import RecordingRun, SmallStream

    assert len(jax.devices()) == 4, jax.devices()
    results = {}
    for name, sizes, devices in (("single", dict(data=1, fsdp=1, tensor=1), jax.devices()[:1]),
                                 ("mesh", dict(data=1, fsdp=2, tensor=2), jax.devices())):
        from rung_jax.options import MeshOptions

        mesh = runtime.make_mesh(MeshOptions(**sizes), devices)
        model = _model()
        run = RecordingRun(out / name)
        JaxEngine(model, mesh=mesh, precision="fp32").fit(
            next_token_loss, SmallStream(VOCAB, BATCH, SEQ), _options(), run)
        params = {".".join(map(str, p)): np.asarray(v.get_value()) for p, v in
                  nnx.to_flat_state(nnx.state(model, nnx.Param))}
        spec = nnx.state(model, nnx.Param)["model"]["layers"][0]["self_attn"]["q_proj"]["kernel"].get_value().sharding
        results[name] = {"losses": [m["loss"] for _, m in run.logs],
                         "grad_norms": [m["grad_norm"] for _, m in run.logs],
                         "q_spec": str(getattr(spec, "spec", None))}
        np.savez(out / f"{name}.npz", **params)
    (out / "results.json").write_text(json.dumps(results))


def train(out: Path, steps: int, save_every: int, hang_at: int | None) -> None:
    """Train `steps` steps with checkpoints; with `hang_at`, block once that many batches were taken."""
    from rung_jax.engine import JaxEngine
    from rung_jax.objectives import next_token_loss
    from tests.jax.helpers import FileRun, HangingStream

    out.mkdir(parents=True, exist_ok=True)
    run = FileRun(out)
    stream = HangingStream(VOCAB, BATCH, SEQ, hang_at=hang_at)
    model = _model()
    JaxEngine(model, precision="fp32").fit(
        next_token_loss, stream, _options(steps=steps, save_every=save_every, resume="auto"), run)
    _write_weights(model, out / "final.npz")


def _write_weights(model, path: Path) -> None:
    import numpy as np
    from flax import nnx

    np.savez(path, **{".".join(map(str, p)): np.asarray(v.get_value())
                      for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))})


def multihost(out: Path, process_id: int, processes: int, port: int) -> None:
    """One of `processes` JAX processes (jax.distributed over gloo), each reading its own slice."""
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    from rung_jax.engine import JaxEngine
    from rung_jax.objectives import next_token_loss
    from rung_jax.options import DistributedOptions, JaxOptions
    from tests.jax.helpers import RecordingRun, SmallStream

    options = JaxOptions(distributed=DistributedOptions(coordinator_address=f"127.0.0.1:{port}",
                                                        num_processes=processes, process_id=process_id))
    from rung_jax import runtime

    runtime.initialize_distributed(options.distributed)  # before any device is touched (as the backend does)
    engine = JaxEngine(_model(), options, precision="fp32")
    assert (engine.rank, engine.world_size) == (process_id, processes)
    run = RecordingRun(out)
    stream = SmallStream(VOCAB, BATCH // processes, SEQ, seed=process_id)
    engine.fit(next_token_loss, stream, _options(save_every=2), run)
    if process_id == 0:
        (out / "losses.json").write_text(json.dumps([m["loss"] for _, m in run.logs]))


def concatenated(out: Path, processes: int) -> None:
    """The same global batches in one process: every process's slice, concatenated."""
    import numpy as np

    from rung_jax.engine import JaxEngine
    from rung_jax.objectives import next_token_loss
    from tests.jax.helpers import RecordingRun, SmallStream

    class Concat:
        def __init__(self):
            self.parts = [SmallStream(VOCAB, BATCH // processes, SEQ, seed=i) for i in range(processes)]

        def __next__(self):
            batches = [next(p) for p in self.parts]
            return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}

        def state_dict(self):
            return {}

        def load_state_dict(self, state):
            pass

    run = RecordingRun(out)
    JaxEngine(_model(), precision="fp32").fit(next_token_loss, Concat(), _options(), run)
    (out / "losses.json").write_text(json.dumps([m["loss"] for _, m in run.logs]))


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["sharded", "train", "multihost", "concatenated"])
    parser.add_argument("out", type=Path)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--save-every", type=int, default=2)
    parser.add_argument("--hang-at", type=int, default=None)
    parser.add_argument("--process-id", type=int, default=0)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--port", type=int, default=12355)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.command == "sharded":
        sharded(args.out)
    elif args.command == "multihost":
        multihost(args.out, args.process_id, args.processes, args.port)
    elif args.command == "concatenated":
        concatenated(args.out, args.processes)
    else:
        train(args.out, args.steps, args.save_every, args.hang_at)


if __name__ == "__main__":
    main(sys.argv[1:])

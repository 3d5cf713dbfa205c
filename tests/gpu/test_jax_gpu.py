"""The jax backend on a GPU: the engine trains there in bf16, and greedy decoding there gives the
text the CPU gives from the same weights. Skipped unless jax sees a GPU (CPU jax: tests/jax)."""

from __future__ import annotations

import math

import pytest

from rung.records import GenerationRequest

from tests.gpu.helpers import falling

pytestmark = pytest.mark.cuda

jax = pytest.importorskip("jax")


@pytest.fixture(scope="module")
def gpus():
    try:
        found = jax.devices("gpu")
    except RuntimeError:  # no GPU backend in this jax (a CPU-only jaxlib, or no driver)
        found = []
    if not found:
        pytest.skip(f"jax sees no GPU (its backend: {jax.default_backend()}); CPU jax is tested in tests/jax")
    return found


def platforms(model) -> set[str]:
    from flax import nnx

    return {device.platform for leaf in jax.tree_util.tree_leaves(nnx.state(model, nnx.Param))
            for device in leaf.devices()}


def test_the_jax_engine_trains_in_bf16_on_the_gpu(gpus, tmp_path):
    from rung.model_config import preset
    from rung.training import TrainingOptions
    from rung_jax import runtime
    from rung_jax.engine import JaxEngine
    from rung_jax.model import init_model
    from rung_jax.objectives import next_token_loss

    from tests.jax.helpers import RecordingRun, SmallStream

    with jax.default_device(gpus[0]):
        model = init_model(preset("test", vocab_size=64), seed=0)
    engine = JaxEngine(model, mesh=runtime.make_mesh(None, gpus[:1]), precision="bf16")
    assert engine.precision == "bf16"
    run = RecordingRun(tmp_path)
    engine.fit(next_token_loss, SmallStream(64, 8, 32),
               TrainingOptions(steps=12, log_every=1, learning_rate=3e-3, warmup_steps=2, resume="never"), run)
    losses = [metrics["loss"] for _, metrics in run.logs]
    assert len(losses) == 12 and all(math.isfinite(x) for x in losses) and falling(losses), losses
    assert platforms(model) == {"gpu"}


def test_greedy_decoding_on_the_gpu_equals_the_cpu(gpus, tmp_path, byte_tokenizer):
    import rung

    made = rung.backend("jax", model="test", tokenizer=byte_tokenizer, device="cpu", architecture={"init_std": 0.3})
    made.save(tmp_path)
    on_gpu = rung.backend("jax", model=str(tmp_path), device="gpu", precision="fp32")
    on_cpu = rung.backend("jax", model=str(tmp_path), device="cpu", precision="fp32")
    assert platforms(on_gpu.model) == {"gpu"} and platforms(on_cpu.model) == {"cpu"}
    texts = []
    for prompt in ("Hello there", "x", "A longer prompt, to fill a few more positions of the cache"):
        request = GenerationRequest(prompt=prompt, max_tokens=16, temperature=0.0)
        with jax.default_matmul_precision("highest"):  # fp32 matmuls, not TF32, on the GPU
            gpu, cpu = on_gpu.generate(request), on_cpu.generate(request)
            streamed = "".join(delta.text for delta in on_gpu.stream(request))
        assert (gpu.text, gpu.finish_reason) == (cpu.text, cpu.finish_reason), prompt
        assert streamed == gpu.text
        texts.append(gpu.text)
    assert len(set(texts)) > 1, texts

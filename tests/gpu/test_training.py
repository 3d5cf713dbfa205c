"""The torch engine's GPU training paths: bf16 autocast, the fused AdamW kernel, torch.compile.

Each runs on the GPU when torch sees one, else on the CPU (torch.compile skips there: compiling
a training step takes ~30 s on a CPU and is not what the CPU suite is for).
"""

from __future__ import annotations

import math

import pytest
import torch

from tests.gpu.helpers import StrideTokens, falling, next_token_loss, tiny_model, train, training_options

pytestmark = pytest.mark.cuda


def test_bf16_training_runs_its_forward_in_bf16_and_the_loss_falls(device, tmp_path):
    model = tiny_model()
    head_dtypes: set[torch.dtype] = set()
    model.lm_head.register_forward_hook(lambda module, args, out: head_dtypes.add(out.dtype))
    engine, run = train(model, device, tmp_path / "bf16", steps=12, precision="bf16")
    _, fp32 = train(tiny_model(), device, tmp_path / "fp32", steps=12, precision="fp32")

    assert engine.precision == "bf16" and head_dtypes == {torch.bfloat16}  # autocast really ran
    losses = run.series("loss")
    assert len(losses) == 12 and all(math.isfinite(x) for x in losses), losses
    assert falling(losses), losses
    # The same weights and first batch: bf16 rounding moves the first loss by well under 2%.
    assert losses[0] == pytest.approx(fp32.series("loss")[0], rel=2e-2)
    # Mixed precision keeps fp32 master weights, on the device.
    assert {(p.dtype, p.device.type) for p in model.parameters()} == {(torch.float32, device.type)}


def test_the_engines_fused_adamw_equals_the_unfused_one_after_ten_steps(device, exact_fp32):
    from rung_torch.engine.optim import build_adamw, build_optimizer, param_groups

    options = training_options(learning_rate=1e-2, weight_decay=0.1)
    fused_model, plain_model = tiny_model().to(device), tiny_model().to(device)
    fused = build_adamw(fused_model, options, device)
    assert fused.defaults["fused"] is True  # the kernel the engine asks for on CUDA and on the CPU
    assert build_optimizer(tiny_model().to(device), options, device).defaults["fused"] is True
    plain = torch.optim.AdamW(param_groups(plain_model, options.weight_decay), lr=options.learning_rate,
                              betas=tuple(options.betas), eps=1e-8, foreach=False, fused=False)
    start = {name: p.detach().clone() for name, p in plain_model.named_parameters()}
    stream = StrideTokens()
    for _ in range(10):
        ids = torch.from_numpy(next(stream)["input_ids"]).to(device)
        for model, optimizer in ((fused_model, fused), (plain_model, plain)):
            loss, _ = next_token_loss(model, {"input_ids": ids})
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    fused_params = dict(fused_model.named_parameters())
    for name, p in plain_model.named_parameters():
        assert not torch.equal(p, start[name]), f"{name} did not move"
        # The same update in another order of operations: float noise, not a different rule.
        torch.testing.assert_close(fused_params[name], p, rtol=1e-5, atol=1e-6, msg=name)


def test_a_compiled_training_step_trains_as_the_eager_one(cuda_device, tmp_path):
    _, eager = train(tiny_model(), cuda_device, tmp_path / "eager", steps=6, precision="bf16")
    model = tiny_model()
    _, compiled = train(model, cuda_device, tmp_path / "compiled", steps=6, precision="bf16", compile=True)

    assert getattr(model, "_compiled_call_impl", None) is not None  # nn.Module.compile ran
    losses = compiled.series("loss")
    assert all(math.isfinite(x) for x in losses) and falling(losses), losses
    # Inductor fuses the bf16 element-wise work differently from eager kernels: close, not equal.
    assert losses == pytest.approx(eager.series("loss"), rel=3e-2)

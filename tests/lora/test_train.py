"""sft and lora on tiny models: held-out loss falls, adapters load in peft, export merges."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("rung_torch.engine")  # the engine comes from rung-torch

from rung.config import make_config
from rung.errors import RungError
from rung.runner import Run, build
from rung_lora.synthetic import write_task


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    folder = tmp_path_factory.mktemp("arith")
    train, held = write_task("arithmetic", folder, train=256, eval=16, seed=0)
    return str(train), str(held)


class Interrupted(Exception):
    pass


def train(out, task, trainer, stop_at=None, **options):
    config = make_config({
        "output_dir": str(out),
        "backend": {"name": "torch", "model": "test", "device": "cpu", "precision": "fp32"},
        "tokenizer": {"name": "byte"},
        "data": {"name": "chat_jsonl", "path": task[0]},
        "trainer": {"name": trainer, "steps": 24, "batch_size": 16, "warmup_steps": 2, "log_every": 8,
                    "eval_every": 24, "eval_data": {"name": "chat_jsonl", "path": task[1]},
                    "resume": "never", **options},
        "logging": {"sinks": [{"name": "jsonl"}]},
    })
    run = Run(config)
    run.output_dir.mkdir(parents=True, exist_ok=True)
    if stop_at is not None:  # a run cut off right after the checkpoint of step `stop_at`
        def checkpointed(step, path):
            if step == stop_at:
                raise Interrupted
        run.checkpointed = checkpointed
    try:
        result = build(run.plugins, "trainer", config.trainer).train(run)
    except Interrupted:
        result = None
    run.close()
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [m["eval_loss"] for m in metrics if "eval_loss" in m]
    return run, result, metrics, evals


def test_sft_lowers_held_out_loss(tmp_path, task):
    run, result, metrics, evals = train(tmp_path, task, "sft", learning_rate=3e-3)
    assert result.steps == 24
    assert evals[-1] < evals[0] - 1.0, evals  # before training vs after 24 steps
    saved = tmp_path / "model"
    assert (saved / "model.safetensors").is_file() and (saved / "tokenizer.json").is_file()


def test_lora_trains_saves_peft_adapter_and_exports(tmp_path, task):
    from click.testing import CliRunner
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    from rung.cli.main import cli

    run, result, metrics, evals = train(tmp_path, task, "lora", learning_rate=3e-2, r=8,
                                        eval_metric="exact_match", eval_generate=4, max_new_tokens=4)
    assert evals[-1] < evals[0] - 0.2, evals  # a random base: LoRA on attention moves it slowly
    first = next(m for m in metrics if "trainable_params" in m)
    assert 0 < first["trainable_params"] < 0.5 * first["total_params"]
    assert any("eval_exact_match" in m for m in metrics)

    adapter = tmp_path / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file() and (adapter / "adapter_config.json").is_file()
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]

    ids = torch.tensor([[5, 49, 50, 43, 51, 52, 61, 10, 100, 3]])
    trained = run.backend().model.eval()
    with torch.no_grad():
        expected = trained(ids)
        expected = expected if torch.is_tensor(expected) else expected.logits
        # The same adapter through plain transformers + peft, on the saved base.
        base = LlamaForCausalLM.from_pretrained(config["base_model_name_or_path"])
        peft_logits = PeftModel.from_pretrained(base, str(adapter)).eval()(ids).logits
    assert torch.allclose(peft_logits, expected, atol=1e-4), (peft_logits - expected).abs().max()

    # A backend loads base + adapter for generation.
    import rung
    from rung_lora import load_adapter

    served = rung.backend("torch", model=config["base_model_name_or_path"], device="cpu", precision="fp32")
    load_adapter(served, adapter)
    with torch.no_grad():
        assert torch.allclose(served.model(ids), expected, atol=1e-4)
    assert isinstance(rung.ask(served, "12+34=", max_tokens=3).text, str)
    # ... or from its options, as a config would say: backend: {name: torch, model: ..., adapter: ...}
    configured = rung.backend("torch", model=config["base_model_name_or_path"], adapter=str(adapter),
                              device="cpu", precision="fp32")
    with torch.no_grad():
        assert torch.allclose(configured.model(ids), expected, atol=1e-4)
    from rung.errors import ConfigError

    with pytest.raises(ConfigError, match="is not a PEFT adapter directory"):
        rung.backend("torch", model=config["base_model_name_or_path"], adapter=str(tmp_path))

    merged = tmp_path / "merged"
    out = CliRunner().invoke(cli, ["export", str(adapter), str(merged)])
    assert out.exit_code == 0, out.output
    with torch.no_grad():
        merged_logits = LlamaForCausalLM.from_pretrained(str(merged)).eval()(ids).logits
    assert torch.allclose(merged_logits, expected, atol=1e-4), (merged_logits - expected).abs().max()


def test_qlora_without_cuda_is_a_clear_error(tmp_path, task):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(RungError, match="QLoRA needs a CUDA GPU"):
        train(tmp_path, task, "lora", qlora=True)


def test_default_targets_per_architecture():
    from transformers import GPT2Config, GPT2LMHeadModel

    from rung.model_config import preset
    from rung_torch.adapters import default_targets
    from rung_torch.model import Transformer

    rung_model = Transformer(preset("test", vocab_size=64))
    assert default_targets(rung_model) == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert default_targets(rung_model, "all-linear") == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64, n_positions=32))
    assert default_targets(gpt2) == ["c_attn"]
    with pytest.raises(RungError, match="no linear layer named qkv"):
        default_targets(gpt2, ["qkv"])


def test_lora_on_a_transformers_gpt2_through_the_hf_backend(tmp_path, task):
    pytest.importorskip("rung_hf.backend")
    from peft import PeftModel
    from transformers import GPT2Config, GPT2LMHeadModel

    import rung

    base = tmp_path / "gpt2"
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=272, n_positions=128)).save_pretrained(base)
    rung.tokenizer("byte").save(base)
    out = tmp_path / "run"
    config = make_config({
        "output_dir": str(out),
        "backend": {"name": "hf", "model": str(base), "device": "cpu", "precision": "fp32"},
        "data": {"name": "chat_jsonl", "path": task[0]},
        "trainer": {"name": "lora", "steps": 16, "batch_size": 16, "learning_rate": 3e-2, "warmup_steps": 2,
                    "eval_every": 16, "eval_data": {"name": "chat_jsonl", "path": task[1]}, "resume": "never",
                    "use_dora": True},
        "logging": {"sinks": [{"name": "jsonl"}]},
    })
    run = Run(config)
    out.mkdir(parents=True)
    build(run.plugins, "trainer", config.trainer).train(run)
    run.close()
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [m["eval_loss"] for m in metrics if "eval_loss" in m]
    assert evals[-1] < evals[0], evals
    adapter = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter["target_modules"] == ["c_attn"] and adapter["use_dora"]
    ids = torch.tensor([[60, 124, 117, 115, 101, 114, 124, 62, 10, 49, 50, 43]])
    with torch.no_grad():
        expected = run.backend().model.eval()(ids).logits
        loaded = PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(base), str(out / "adapter")).eval()
        assert torch.allclose(loaded(ids).logits, expected, atol=1e-4)
        # The hf backend serves base + adapter from its options.
        import rung

        served = rung.backend("hf", model=str(base), adapter=str(out / "adapter"))
        assert torch.allclose(served.model(ids).logits, expected, atol=1e-4)


def test_lora_resumes_from_a_checkpoint_on_the_same_losses(tmp_path, task):
    common = dict(r=4, learning_rate=1e-2, log_every=4, save_every=4, eval_every=None, eval_size=0,
                  eval_data=None, resume="auto")
    _, _, straight, _ = train(tmp_path / "a", task, "lora", steps=12, **common)
    train(tmp_path / "b", task, "lora", stop_at=8, steps=12, **common)
    _, result, resumed, _ = train(tmp_path / "b", task, "lora", steps=12, **common)
    assert result.steps == 12
    losses = lambda rows: {m["step"]: m["loss"] for m in rows if "loss" in m}  # noqa: E731
    assert losses(resumed)[12] == pytest.approx(losses(straight)[12], abs=1e-6)

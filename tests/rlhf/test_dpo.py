"""dpo on tiny models: the loss equals a hand computation and TRL's DPOTrainer, the shared-prompt
layout gives the separate layout's log-probabilities, every loss type trains, a killed run
resumes on the same losses, LoRA trains through `rung run`, and jax gives torch's first batch."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

torch = pytest.importorskip("torch")
pytest.importorskip("rung_torch.engine")

from rung.config import make_config  # noqa: E402
from rung.errors import RungError  # noqa: E402
from rung.records import Message, PreferencePair  # noqa: E402
from rung.runner import Run, build  # noqa: E402
from rung_lora.templates import make_renderer  # noqa: E402
from rung_rlhf.dpo import DPOObjective  # noqa: E402
from rung_rlhf.formatting import Formatter, TokenizedPair  # noqa: E402
from rung_rlhf.pairs import collate_pairs  # noqa: E402
from rung_rlhf.preference_options import DPOOptions  # noqa: E402
from rung_rlhf.reference import answer_logprobs, model_inputs  # noqa: E402
from rung_torch.objectives import token_logprobs  # noqa: E402

RUNG = str(Path(sys.executable).with_name("rung"))
PAIRS = [PreferencePair((Message("user", "12+34="),), "46", "47"),
         PreferencePair((Message("system", "Add."), Message("user", "7+5=")), "12", "it is 13"),
         PreferencePair((Message("user", "1+1="),), "2", "11"),
         PreferencePair((Message("user", "what is 30+12?"),), "42", "32")]


def load_llama(folder, noise: float = 0.0, seed: int = 1):
    """The saved tiny model through transformers; `noise` perturbs every weight (another model)."""
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(str(folder), attn_implementation="eager").eval()
    if noise:
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(noise * torch.randn(p.shape, generator=generator))
    return model


def tokenized(byte_tok) -> list[TokenizedPair]:
    return [Formatter(make_renderer("chatml", byte_tok), byte_tok).pair(p) for p in PAIRS]


def answer_sums(model, pairs, layout="shared", length=128):
    batch = collate_pairs(pairs, layout, length, 257)
    with torch.no_grad():
        values, _ = token_logprobs(model, model_inputs(batch))
    chosen, rejected = answer_logprobs(values, batch, 1 if layout == "shared" else 2)
    return chosen.double().numpy(), rejected.double().numpy()


def by_hand(model, prompt, answer) -> float:
    """log p(answer | prompt), the row prompt + answer run alone, summed with log_softmax."""
    ids = torch.tensor([prompt + answer])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(ids).logits[0].double(), -1)
    return sum(float(logprobs[len(prompt) + i - 1, t]) for i, t in enumerate(answer))


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge"])
def test_first_batch_loss_equals_a_hand_computation(tiny_model_dir, byte_tok, loss_type):
    policy, reference = load_llama(tiny_model_dir), load_llama(tiny_model_dir, noise=0.02)
    pairs = tokenized(byte_tok)
    logp = np.array([[by_hand(policy, p.prompt, p.chosen), by_hand(policy, p.prompt, p.rejected)] for p in pairs])
    ref = np.array([[by_hand(reference, p.prompt, p.chosen), by_hand(reference, p.prompt, p.rejected)] for p in pairs])
    beta, smoothing = 0.3, (0.2 if loss_type == "sigmoid" else 0.0)
    d = (logp[:, 0] - ref[:, 0]) - (logp[:, 1] - ref[:, 1])
    if loss_type == "sigmoid":
        logsig = lambda x: -np.logaddexp(0, -x)  # noqa: E731
        expected = np.mean(-(1 - smoothing) * logsig(beta * d) - smoothing * logsig(-beta * d))
    elif loss_type == "hinge":
        expected = np.mean(np.maximum(0, 1 - beta * d))
    else:
        lengths = np.array([[len(p.chosen), len(p.rejected)] for p in pairs])
        ratios = (logp - ref) / lengths
        expected = np.mean((ratios[:, 0] - ratios[:, 1] - 1 / (2 * beta)) ** 2)

    options = DPOOptions(beta=beta, loss_type=loss_type, label_smoothing=smoothing)
    batch = collate_pairs(pairs, "shared", 128, 257, reference=ref)
    with torch.no_grad():
        loss, metrics = DPOObjective(token_logprobs, options, rows=1)(policy, batch)
    assert float(loss) == pytest.approx(expected, abs=1e-5)
    assert float(metrics["rewards/margins"]) == pytest.approx(beta * d.mean(), abs=1e-5)
    assert float(metrics["rewards/accuracies"]) == pytest.approx(np.mean(d > 0))
    assert float(metrics["logps/chosen"]) == pytest.approx(logp[:, 0].mean(), abs=1e-4)
    assert 0.0 < np.mean(d > 0) < 1.0 or loss_type != "sigmoid"  # the perturbation gave a real mix


def test_shared_layout_log_probs_equal_separate(tiny_model_dir, byte_tok):
    pairs = tokenized(byte_tok)
    import rung

    rung_model = rung.backend("torch", model=str(tiny_model_dir), device="cpu", precision="fp32").model.eval()
    llama = load_llama(tiny_model_dir)
    for model, plain in ((llama, llama), (rung_model, _logits(rung_model))):
        shared, separate = answer_sums(model, pairs, "shared"), answer_sums(model, pairs, "separate")
        # 1e-5, or float32's rounding of a sum of ~100 log-probabilities (1e-7 relative, seen where
        # oneDNN's AVX512 kernels sum in another order); a masking error is off by far more
        np.testing.assert_allclose(shared[0], separate[0], atol=1e-5, rtol=1e-6)
        np.testing.assert_allclose(shared[1], separate[1], atol=1e-5, rtol=1e-6)
        alone = [by_hand(plain, p.prompt, p.rejected) for p in pairs]  # each row run alone, no packing
        np.testing.assert_allclose(shared[1], alone, atol=1e-5, rtol=1e-6)


class _logits(torch.nn.Module):
    """rung's model (which returns logits) answering `.logits` as transformers models do."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, ids):
        return type("Out", (), {"logits": self.model(ids)})()


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge"])
def test_loss_equals_trls_dpo_trainer(tmp_path, tiny_model_dir, loss_type):
    datasets = pytest.importorskip("datasets")
    trl = pytest.importorskip("trl")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    rows = [{"prompt": p.prompt[-1].content, "chosen": p.chosen, "rejected": p.rejected} for p in PAIRS]
    policy, reference = load_llama(tiny_model_dir), load_llama(tiny_model_dir, noise=0.02)
    args = trl.DPOConfig(output_dir=str(tmp_path / "trl"), beta=0.2, loss_type=loss_type, per_device_train_batch_size=4,
                         max_length=None, report_to="none", use_cpu=True, bf16=False, fp16=False,
                         dataset_num_proc=None, precompute_ref_log_probs=False, seed=0)
    trainer = trl.DPOTrainer(model=policy, ref_model=reference, args=args, processing_class=tokenizer,
                             train_dataset=datasets.Dataset.from_list(rows))
    examples = [trainer.train_dataset[i] for i in range(len(rows))]
    inputs = {k: v for k, v in trainer.data_collator(examples).items()}
    with torch.no_grad():
        trl_loss = float(trainer._compute_loss(trainer.model.eval(), inputs, False))

    # The same tokens TRL trains on, through rung's layout, objective and loss.
    pairs = [TokenizedPair(e["prompt_ids"], e["chosen_ids"], e["rejected_ids"]) for e in examples]
    ours_policy, ours_reference = load_llama(tiny_model_dir), load_llama(tiny_model_dir, noise=0.02)
    ref = np.stack(answer_sums(ours_reference, pairs), axis=-1)
    batch = collate_pairs(pairs, "shared", 128, tokenizer.pad_token_id or 0, reference=ref)
    with torch.no_grad():
        ours, _ = DPOObjective(token_logprobs, DPOOptions(beta=0.2, loss_type=loss_type), rows=1)(ours_policy, batch)
    assert float(ours) == pytest.approx(trl_loss, abs=1e-5)
    assert abs(trl_loss - {"sigmoid": math.log(2), "ipo": 6.25, "hinge": 1.0}[loss_type]) > 1e-4  # not trivial


def dpo_config(out, data, backend=None, **trainer):
    return {
        "output_dir": str(out), "seed": 0,
        "backend": backend or {"name": "torch", "model": "test", "device": "cpu", "precision": "fp32"},
        "tokenizer": {"name": "byte"},
        "data": {"name": "preference_jsonl", "path": str(data)},
        "trainer": {"name": "dpo", "steps": 4, "batch_size": 4, "learning_rate": 1e-3, "warmup_steps": 0,
                    "log_every": 1, "max_length": 96, "eval_size": 0, "eval_on_start": False,
                    "resume": "never", **trainer},
        "logging": {"sinks": [{"name": "jsonl"}]},
    }


class Interrupted(Exception):
    pass


def train(out, data, stop_at=None, **trainer):
    config = make_config(dpo_config(out, data, **trainer))
    run = Run(config)
    run.output_dir.mkdir(parents=True, exist_ok=True)
    if stop_at is not None:  # a run cut off right after the checkpoint of step `stop_at`
        def checkpointed(step, path):
            if step == stop_at:
                raise Interrupted
        run.checkpointed = checkpointed
    try:
        build(run.plugins, "trainer", config.trainer).train(run)
    except Interrupted:
        pass
    finally:
        run.close()
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def losses(rows):
    return {m["step"]: m["loss"] for m in rows if "loss" in m}


@pytest.mark.parametrize("loss_type,start", [("sigmoid", math.log(2)), ("ipo", 25.0), ("hinge", 1.0)])
def test_every_loss_type_trains(tmp_path, preference_files, loss_type, start):
    rows = train(tmp_path, preference_files[0], loss_type=loss_type, steps=3, eval_size=8, eval_on_start=True,
                 eval_every=3, label_smoothing=0.1 if loss_type == "sigmoid" else 0.0)
    first = next(m for m in rows if "eval_loss" in m)
    # Before training the policy is its reference: every log-ratio is 0.
    assert first["eval_loss"] == pytest.approx(start, abs=1e-5) and first["eval_rewards/margins"] == 0.0
    last = [m for m in rows if "eval_loss" in m][-1]
    assert last["eval_loss"] != first["eval_loss"] and math.isfinite(last["eval_loss"])
    assert all(k in rows[-2] or k in rows[-1] for k in ("rewards/chosen", "rewards/rejected", "rewards/accuracies",
                                                         "rewards/margins", "kl"))
    assert (tmp_path / "model" / "model.safetensors").is_file()


def test_a_killed_run_resumes_on_the_same_losses(tmp_path, preference_files):
    common = dict(steps=8, save_every=4, resume="auto", layout="separate")
    straight = train(tmp_path / "a", preference_files[0], **common)
    killed = train(tmp_path / "b", preference_files[0], stop_at=4, **common)
    resumed = train(tmp_path / "b", preference_files[0], **common)
    assert len(losses(straight)) == 8
    for step in range(5, 9):
        assert losses(resumed)[step] == pytest.approx(losses(straight)[step], abs=1e-6), step
    # The reference came from the cache the killed run wrote: it computed it, the resumed one
    # reused it (metrics.jsonl holds each step once, so the resumed run's step-0 record replaced it).
    assert [m["reference_train_cached"] for m in killed if "reference_train_cached" in m] == [0.0]
    assert [m["reference_train_cached"] for m in resumed if "reference_train_cached" in m] == [1.0]
    # A cache made for other data is refused on resume ...
    with pytest.raises(RungError, match="other data or another model"):
        train(tmp_path / "b", preference_files[0], **{**common, "max_length": 90, "steps": 12})
    # ... and recomputed for a fresh run.
    rows = train(tmp_path / "b", preference_files[0], **{**common, "max_length": 90, "resume": "never", "steps": 1})
    assert [m["reference_train_cached"] for m in rows if "reference_train_cached" in m][-1] == 0.0


def rung_run(config: Path, *overrides: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([RUNG, "run", str(config), *overrides], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-3000:]


def test_rung_run_dpo_with_lora_saves_an_adapter(tmp_path, preference_files, tiny_model_dir):
    from peft import PeftModel
    from safetensors.numpy import load_file

    config = dpo_config(tmp_path / "out", preference_files[0],
                        backend={"name": "torch", "model": str(tiny_model_dir), "device": "cpu", "precision": "fp32"},
                        lora={"r": 4}, learning_rate=1e-2, steps=4)
    path = tmp_path / "dpo.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    rung_run(path)
    adapter = tmp_path / "out" / "adapter"
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    assert any("lora_B" in k and np.abs(v).max() > 0 for k, v in weights.items())  # it trained
    assert not (tmp_path / "out" / "model").exists()
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    first = next(m for m in rows if "trainable_params" in m)
    assert 0 < first["trainable_params"] < 0.5 * first["total_params"]
    assert rows[-1]["rewards/margins"] != 0.0
    # The adapter loads on its base in peft and moves the model's log-probabilities.
    pairs_batch = collate_pairs([TokenizedPair([60, 61, 62], [49, 50], [51])], "shared", 16, 257)
    base = load_llama(tiny_model_dir)
    with torch.no_grad():
        before, _ = token_logprobs(base, model_inputs(pairs_batch))
        after, _ = token_logprobs(PeftModel.from_pretrained(load_llama(tiny_model_dir), str(adapter)).eval(),
                                  model_inputs(pairs_batch))
    assert not torch.allclose(before, after, atol=1e-4)


def test_jax_gives_torchs_first_batch(tmp_path, preference_files, tiny_model_dir):
    pytest.importorskip("jax")
    from rung.plugins import get_plugins

    if "token_logprobs/jax" not in get_plugins().registry.items.get("objective", {}):
        pytest.skip("rung-jax does not provide token_logprobs yet")
    first = {}
    for name in ("torch", "jax"):
        backend = {"name": name, "model": str(tiny_model_dir), "device": "cpu", "precision": "fp32"}
        rows = train(tmp_path / name, preference_files[0], backend=backend, steps=1, eval_size=8,
                     eval_on_start=True, learning_rate=1e-2)
        first[name] = {**next(m for m in rows if "eval_loss" in m), **next(m for m in rows if "loss" in m)}
    for key in ("loss", "eval_loss", "logps/chosen", "logps/rejected", "eval_logps/chosen", "eval_logps/rejected"):
        assert first["jax"][key] == pytest.approx(first["torch"][key], abs=1e-4, rel=1e-5), key

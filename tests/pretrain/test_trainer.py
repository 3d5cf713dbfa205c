"""The `pretrain` trainer end to end: a tiny corpus made here -> tokenizer -> shards -> a
`test`-preset model, through `rung.run` and the `rung run` CLI; resume; continue pretraining."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("datatrove")

import rung  # noqa: E402

WORDS = ["alpha", "beta", "gamma", "delta", "sigma", "omega", "theta", "kappa", "lambda", "zeta"]


def make_corpus(folder: Path, files: int = 24) -> Path:
    """~12 KB of small, regular Python modules (every file different)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        parts = [f'"""Module {i}: helpers for {WORDS[i % len(WORDS)]}."""\n\nimport math\n']
        for j in range(5):
            name = f"{WORDS[(i + j) % len(WORDS)]}_{WORDS[(3 * i + j) % len(WORDS)]}_{j}"
            parts.append(
                f"def {name}(x, y={j}):\n"
                f'    """Return the {WORDS[(i * j) % len(WORDS)]} of x and y."""\n'
                f"    if x > {i + j}:\n        return x + y\n    return math.sqrt(x * y)\n"
            )
        (folder / f"module_{i:02d}.py").write_text("\n\n".join(parts), encoding="utf-8")
    return folder


def config(tmp: Path, corpus: Path, name: str = "run", shards: str = "shards", **trainer) -> dict:
    return {
        "output_dir": str(tmp / name),
        "seed": 0,
        "tokenizer": {"name": "bpe", "vocab_size": 320},
        "data": {
            "name": "corpus",
            "sources": [{"name": "files", "paths": [str(corpus)]}],
            "clean": {"minhash": False, "quality": False},
            "shards": {"dir": str(tmp / shards), "val_fraction": 0.25},
            "workers": 1,
        },
        "backend": {"name": "torch", "model": "test", "precision": "fp32"},
        "trainer": {
            "name": "pretrain", "steps": 30, "batch_size": 8, "seq_len": 32, "learning_rate": 1e-2,
            "warmup_steps": 3, "log_every": 5, "eval_every": 10, "sample_every": 10, "val_batches": 2,
            "sample_tokens": 8, "sample_prompts": ["def ", "import "], **trainer,
        },
        "logging": {"sinks": [{"name": "jsonl"}]},
    }


def records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """One 30-step run, shared by the tests below."""
    tmp = tmp_path_factory.mktemp("pretrain")
    corpus = make_corpus(tmp / "corpus")
    result = rung.run(config(tmp, corpus))
    return tmp, corpus, result


def test_pretrain_learns_logs_and_saves(pretrained):
    tmp, corpus, result = pretrained
    run_dir = tmp / "run"
    logged = records(run_dir)
    losses = [r["loss"] for r in logged if "loss" in r]
    assert len(losses) == 6 and losses[-1] < 0.7 * losses[0], losses
    val = {r["step"]: r for r in logged if "val_loss" in r}
    assert sorted(val) == [10, 20, 30]
    baseline = result.metrics["unigram_loss"]
    assert val[30]["val_loss"] < val[10]["val_loss"]
    assert val[30]["val_loss"] < baseline, (val[30]["val_loss"], baseline)  # beats the unigram model
    assert val[30]["val_ppl"] == pytest.approx(2.718281828 ** val[30]["val_loss"], rel=1e-6)
    samples = {r["step"]: r for r in logged if "sample_0" in r}
    assert sorted(samples) == [10, 20, 30]
    assert samples[30]["sample_0"].startswith("def ") and samples[30]["sample_1"].startswith("import ")
    assert result.steps == 30 and result.metrics["val_loss"] == pytest.approx(val[30]["val_loss"])
    assert (run_dir / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run_dir / "samples.txt").read_text(encoding="utf-8").count("----- sample") == 2

    # The samples follow the weights: those of step 10 are not those of step 30.
    assert [samples[10][f"sample_{i}"] for i in (0, 1)] != [samples[30][f"sample_{i}"] for i in (0, 1)]

    # The saved model is the trained one, with its tokenizer: it gives the samples logged at
    # the last step (same prompt, seed and settings) and scores the validation windows as the
    # run did.
    import torch

    from rung.objectives import heldout_loss
    from rung_pretrain import prepare
    from rung_torch.objectives import token_nll_sum

    backend = rung.backend("torch", model=str(run_dir / "model"), precision="fp32")
    assert backend.tokenizer.vocab_size == 320
    prompts = ["def ", "import "]
    again = backend.generate_batch([rung.GenerationRequest(prompt=p, raw=True, max_tokens=8, temperature=0.8,
                                                           top_k=40, seed=i) for i, p in enumerate(prompts)])
    assert [c.usage.completion_tokens for c in again] == [8, 8]
    assert [p + c.text for p, c in zip(prompts, again)] == [samples[30]["sample_0"], samples[30]["sample_1"]]
    windows = prepare(config(tmp, corpus)).validation_batches(batch_size=8, seq_len=32, max_batches=2)
    with torch.no_grad():
        scored = heldout_loss(token_nll_sum, windows)(backend.model.eval())
    assert scored["eval_loss"] == pytest.approx(val[30]["val_loss"], abs=1e-5)

    # It was never trained on chat: it carries no chat template, and a chat request to it is
    # continued as plain text, exactly as the raw prompt is.
    saved = json.loads((run_dir / "model" / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert "chat_template" not in saved and not (run_dir / "model" / "chat_template.jinja").exists()
    raw = backend.generate(rung.GenerationRequest(prompt="import ", raw=True, max_tokens=6, temperature=0))
    assert rung.ask(backend, "import ", max_tokens=6, temperature=0).text == raw.text


def test_resume_continues_the_step_count(pretrained):
    tmp, corpus, _ = pretrained
    # Same run folder, more steps: resumes from the step-30 checkpoint and trains 10 more.
    result = rung.run(config(tmp, corpus, steps=40))
    assert result.steps == 40
    logged = records(tmp / "run")
    assert [r["step"] for r in logged if "loss" in r][-2:] == [35, 40]
    assert [r["step"] for r in logged if "sample_0" in r] == [10, 20, 30, 40]


def test_continue_pretraining_a_saved_model(pretrained):
    tmp, corpus, first = pretrained
    # A new run from the saved model: no tokenizer section (the checkpoint's is used).
    cfg = config(tmp, corpus, name="continued", shards="shards_continued", steps=5, log_every=1, eval_every=5,
                 sample_every=None)
    del cfg["tokenizer"]
    cfg["backend"]["model"] = str(tmp / "run" / "model")
    result = rung.run(cfg)
    logged = records(tmp / "continued")
    fresh_first = next(r["loss"] for r in records(tmp / "run") if "loss" in r)
    assert logged[0]["step"] == 1 and logged[0]["loss"] < 0.8 * fresh_first  # starts trained
    assert result.metrics["val_loss"] < result.metrics["unigram_loss"]
    assert (tmp / "continued" / "model" / "model.safetensors").is_file()


def test_cli_runs_the_same_config_on_jax(pretrained, tmp_path):
    pytest.importorskip("jax")
    tmp, corpus, _ = pretrained
    import yaml

    path = tmp_path / "pretrain.yaml"
    path.write_text(yaml.safe_dump(config(tmp, corpus, name="jax")), encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(
        [sys.executable, "-m", "rung.cli.main", "run", str(path), "backend.name=jax", "trainer.steps=6",
         "trainer.eval_every=3", "trainer.sample_every=6"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "----- sample 1 (prompt 'def ')" in done.stdout and "\nimport " in done.stdout
    assert "unigram baseline" in done.stderr and "final validation loss" in done.stderr
    logged = records(tmp / "jax")
    assert [r["step"] for r in logged if "val_loss" in r] == [3, 6]
    # The step-6 samples were generated inside training from the weights of step 6, the
    # final ones: the same text as the samples printed at the end (same seeds and settings).
    logged_samples = next(r for r in logged if r["step"] == 6 and "sample_0" in r)
    printed = (tmp / "jax" / "samples.txt").read_text(encoding="utf-8")
    for i, prompt in enumerate(["def ", "import "]):
        assert f"----- sample {i + 1} (prompt {prompt!r}) -----\n{logged_samples[f'sample_{i}']}\n" in printed
    assert (tmp / "jax" / "loss.png").is_file() and (tmp / "jax" / "model" / "model.safetensors").is_file()


def test_plot_reads_the_latest_history(tmp_path):
    from rung_pretrain.plot import main as plot_main
    from rung_pretrain.metrics import read_metrics

    lines = [{"step": s, "loss": 5.0 - s / 10} for s in (1, 2, 3, 4)]
    lines += [{"step": 4, "val_loss": 4.5, "unigram_loss": 6.0}, {"step": 4, "sample_0": "def f():"}]
    lines += [{"step": 3, "loss": 4.9}, {"step": 4, "loss": 4.8}]  # resumed from step 2
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\nnot json\n")
    history = read_metrics(tmp_path / "metrics.jsonl")
    assert [(r["step"], r.get("loss")) for r in history] == [(1, 4.9), (2, 4.8), (3, 4.9), (4, 4.8)]
    assert plot_main([str(tmp_path)]) == 0
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"

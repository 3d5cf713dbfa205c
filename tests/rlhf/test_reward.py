"""reward on tiny models: held-out pairwise accuracy rises above chance on a separable set; the
saved model loads in `AutoModelForSequenceClassification` with the same scores, and its loss
(with margins) equals a hand computation from those scores; LoRA trains the adapters and head."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("rung_torch.engine")

from rung.config import make_config  # noqa: E402
from rung.runner import Run, build  # noqa: E402
from rung_rlhf.formatting import formatter  # noqa: E402
from rung_rlhf.pairs import collate_pairs  # noqa: E402
from rung_rlhf.preference_data import PreferenceJsonl  # noqa: E402
from rung_rlhf.preference_options import PreferenceJsonlOptions, RewardOptions  # noqa: E402
from rung_rlhf.reward import RewardObjective  # noqa: E402

from tests.rlhf.conftest import separable_pairs, write_jsonl  # noqa: E402


@pytest.fixture(scope="module")
def separable(tmp_path_factory):
    folder = tmp_path_factory.mktemp("separable")
    rows = separable_pairs(96, seed=0)
    for i, row in enumerate(rows):
        row["margin"] = float(i % 3)
    return write_jsonl(folder / "train.jsonl", rows), write_jsonl(folder / "eval.jsonl", separable_pairs(32, seed=1))


def train_reward(out, data, **trainer):
    config = make_config({
        "output_dir": str(out), "seed": 0,
        "backend": {"name": "torch", "model": "test", "device": "cpu", "precision": "fp32"},
        "tokenizer": {"name": "byte"},
        "data": {"name": "preference_jsonl", "path": str(data[0])},
        "trainer": {"name": "reward", "steps": 30, "batch_size": 8, "learning_rate": 3e-3, "warmup_steps": 2,
                    "log_every": 5, "eval_every": 15, "max_length": 64,
                    "eval_data": {"name": "preference_jsonl", "path": str(data[1])}, "resume": "never", **trainer},
        "logging": {"sinks": [{"name": "jsonl"}]},
    })
    run = Run(config)
    run.output_dir.mkdir(parents=True, exist_ok=True)
    build(run.plugins, "trainer", config.trainer).train(run)
    run.close()
    return run, [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def saved_scores(folder, rows: list[list[int]]) -> np.ndarray:
    """Each row's score through transformers alone (right-padded, read at the last real token)."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()
    pad = model.config.pad_token_id
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    with torch.no_grad():
        return model(ids, attention_mask=(ids != pad).long()).logits[:, 0].double().numpy()


@pytest.mark.parametrize("lora", [False, True])
def test_accuracy_rises_and_the_saved_scorer_gives_the_same_scores(tmp_path, separable, byte_tok, lora):
    options = {"lora": {"r": 8}, "learning_rate": 1e-2} if lora else {}
    run, rows = train_reward(tmp_path, separable, **options)
    evals = [m for m in rows if "eval_accuracy" in m]
    assert evals[0]["step"] == 0 and evals[-1]["step"] == 30
    # A new head scores every answer near 0 (loss log 2, accuracy a coin's); training separates them.
    assert evals[0]["eval_loss"] == pytest.approx(np.log(2), abs=0.05)
    assert evals[-1]["eval_accuracy"] >= 0.9 and evals[-1]["eval_loss"] < 0.3, evals
    assert any("accuracy" in m and "rewards/margins" in m for m in rows)  # the step metrics are logged
    if lora:
        first = next(m for m in rows if "trainable_params" in m)
        assert 0 < first["trainable_params"] < 0.5 * first["total_params"]
        assert (tmp_path / "adapter" / "adapter_config.json").is_file()

    # The trained model's scores, packed as training packs them, against the saved folder's.
    saved = tmp_path / "model"
    config = json.loads((saved / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"] and config["num_labels"] == 1
    opts = RewardOptions(max_length=64)
    fmt = formatter(opts, byte_tok)
    pairs = [fmt.pair(p) for p in PreferenceJsonl(PreferenceJsonlOptions(path=str(separable[1]), limit=6)).read()]
    batch = collate_pairs(pairs, "shared", 64, byte_tok.pad_id)
    objective = RewardObjective(run.objective("token_scores"), use_margin=False)
    model = run.backend().model.eval()
    with torch.no_grad():
        chosen, rejected = (t.double().numpy() for t in objective.scores(model, batch))
    np.testing.assert_allclose(saved_scores(saved, [p.prompt + p.chosen for p in pairs]), chosen, atol=1e-4, rtol=0)
    np.testing.assert_allclose(saved_scores(saved, [p.prompt + p.rejected for p in pairs]), rejected, atol=1e-4,
                               rtol=0)
    assert (saved / "tokenizer.json").is_file() and (saved / "chat_template.jinja").is_file()


def test_loss_with_margins_equals_a_hand_computation(tmp_path, separable, byte_tok):
    run, _ = train_reward(tmp_path, separable, steps=2, eval_every=None, eval_on_start=False)
    fmt = formatter(RewardOptions(max_length=64), byte_tok)
    pairs = [fmt.pair(p) for p in PreferenceJsonl(PreferenceJsonlOptions(path=str(separable[0]), limit=6)).read()]
    assert {p.margin for p in pairs} == {0.0, 1.0, 2.0}
    chosen = saved_scores(tmp_path / "model", [p.prompt + p.chosen for p in pairs])
    rejected = saved_scores(tmp_path / "model", [p.prompt + p.rejected for p in pairs])
    margins = np.array([p.margin for p in pairs])
    expected = np.mean(np.logaddexp(0, -(chosen - rejected - margins)))  # -log sigmoid(r_w - r_l - m)
    batch = collate_pairs(pairs, "shared", 64, byte_tok.pad_id)
    with torch.no_grad():
        loss, metrics = RewardObjective(run.objective("token_scores"), use_margin=True)(run.backend().model.eval(),
                                                                                       batch)
    assert float(loss) == pytest.approx(expected, abs=1e-5)
    assert float(metrics["accuracy"]) == pytest.approx(np.mean(chosen > rejected))

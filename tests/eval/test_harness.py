"""rung-eval's lm-evaluation-harness adapter, offline: two harness tasks defined here over local
JSONL files (a rolling perplexity task and a multiple-choice task), run through rung's `LM` and
through the harness's own `hf` model on the same model folder, and again through `rung serve`
with the harness's `local-completions` model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")

from tests.eval.conftest import CORPUS  # noqa: E402

RELATIVE = 1e-4
PPL_METRICS = ("word_perplexity,none", "byte_perplexity,none", "bits_per_byte,none")

QUESTIONS = [
    ("The cat sat on the", [" mat.", " park.", " trees."], 0),
    ("def add(a, b):\n    return", [" a + b", " a - b", " None"], 0),
    ("Rain fell on the", [" hills;", " stones", " morning light"], 1),
    ("the dog ran to the", [" park", " cat", " rain sun wind"], 0),
    ("Les élèves étudient le", [" français", " café", " 日本語"], 0),
    ("birds sang in the", [" trees.", " rivers", " dark"], 2),
]


def write_tasks(folder: Path) -> Path:
    """Two harness task YAMLs over JSONL files in `folder` (the `json` dataset builder: no hub)."""
    texts = [" ".join(CORPUS) * 2, CORPUS[1], "the cat sat. " * 9, CORPUS[3] + "\n" + CORPUS[2]]
    (folder / "ppl.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    (folder / "mc.jsonl").write_text("".join(json.dumps({"question": q, "choices": c, "label": a}) + "\n"
                                             for q, c, a in QUESTIONS))
    (folder / "rung_ppl.yaml").write_text(f"""task: rung_ppl
dataset_path: json
dataset_kwargs:
  data_files:
    test: {folder / 'ppl.jsonl'}
output_type: loglikelihood_rolling
test_split: test
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
""")
    (folder / "rung_mc.yaml").write_text(f"""task: rung_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {folder / 'mc.jsonl'}
output_type: multiple_choice
test_split: test
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
  - metric: acc_norm
""")
    return folder


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory) -> Path:
    return write_tasks(tmp_path_factory.mktemp("harness-tasks"))


def harness_hf(model_dir: Path, tasks_dir: Path, max_length: int | None = None) -> dict:
    """The harness's own `hf` model (HFLM) on the folder: the reference numbers."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    args = f"pretrained={model_dir},dtype=float32,device=cpu" + (f",max_length={max_length}" if max_length else "")
    return lm_eval.simple_evaluate(model="hf", model_args=args, tasks=["rung_ppl", "rung_mc"], batch_size=4,
                                   task_manager=TaskManager(include_path=str(tasks_dir), include_defaults=False),
                                   log_samples=False)["results"]


@pytest.fixture(scope="module")
def reference(eval_model_dir, tasks_dir) -> dict:
    return harness_hf(eval_model_dir, tasks_dir)


def assert_same_results(ours: dict, theirs: dict) -> None:
    for metric in PPL_METRICS:
        assert ours["rung_ppl"][metric] == pytest.approx(theirs["rung_ppl"][metric], rel=RELATIVE), metric
    for metric in ("acc,none", "acc_norm,none"):
        assert ours["rung_mc"][metric] == theirs["rung_mc"][metric], metric


@pytest.mark.parametrize("name", ["torch", "hf"])
def test_rung_backends_give_the_harness_hf_models_numbers(name, eval_backend, tasks_dir, reference):
    from rung_eval.harness import run_harness

    results = run_harness(eval_backend(name), ["rung_ppl", "rung_mc"], include_path=str(tasks_dir), batch_size=3)
    assert_same_results(results["results"], reference)
    assert 1.0 < reference["rung_ppl"]["word_perplexity,none"] < float("inf")
    assert results["n-samples"]["rung_mc"]["effective"] == len(QUESTIONS)


def test_rung_serve_through_local_completions_gives_the_harness_hf_models_numbers(
        eval_backend, eval_model_dir, tasks_dir, monkeypatch):
    """local-completions keeps one token of the context for generation and one for the
    window's context: max_length 64 (the model's context) scores windows of 62, as hf does
    with max_length 62."""
    pytest.importorskip("fastapi")
    import lm_eval
    from lm_eval.tasks import TaskManager

    from rung_serve.app import create_app
    from tests.eval.conftest import CONTEXT
    from tests.serve.serving import API_KEY, NAME, ServerThread

    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    with ServerThread(create_app({NAME: eval_backend("torch")}, api_key=API_KEY)) as served:
        args = (f"model={NAME},base_url={served.url}/v1/completions,tokenizer={eval_model_dir},"
                f"tokenizer_backend=huggingface,max_length={CONTEXT},num_concurrent=1,max_retries=1")
        manager = TaskManager(include_path=str(tasks_dir), include_defaults=False)
        served_results = lm_eval.simple_evaluate(model="local-completions", model_args=args, task_manager=manager,
                                                 tasks=["rung_ppl", "rung_mc"], log_samples=False)["results"]
    assert_same_results(served_results, harness_hf(eval_model_dir, tasks_dir, max_length=CONTEXT - 2))


def test_generate_until_stops_at_until_and_max_gen_toks(eval_backend):
    from lm_eval.api.instance import Instance

    from rung.records import GenerationRequest
    from rung_eval.harness import harness_lm
    from rung_eval.scoring import scorer_for

    backend = eval_backend("torch")
    lm = harness_lm(scorer_for(backend))
    free = backend.generate(GenerationRequest(prompt="the cat", max_tokens=12, temperature=0.0, raw=True)).text
    assert len(free) > 2
    stop = free[1:3]
    requests = [Instance("generate_until", {}, ("the cat", {"until": [stop], "max_gen_toks": 12}), 0),
                Instance("generate_until", {}, ("the cat", {"until": ["\x00never"], "max_gen_toks": 12}), 1),
                Instance("generate_until", {}, ("the cat", {"max_gen_toks": 3}), 2)]
    stopped, whole, short = lm.generate_until(requests)
    assert stopped == free.split(stop, 1)[0] and stop not in stopped
    assert whole == free
    assert short == backend.generate(GenerationRequest(prompt="the cat", max_tokens=3, temperature=0.0, raw=True)).text
    assert len(short) < len(free) and free.startswith(short)


def test_without_lm_eval_one_line_says_what_to_install(eval_backend, monkeypatch):
    from rung.errors import RungError
    from rung_eval.harness import run_harness

    monkeypatch.setitem(sys.modules, "lm_eval", None)  # what an environment without the extra imports
    with pytest.raises(RungError) as caught:
        run_harness(eval_backend("torch"), ["rung_ppl"])
    assert "pip install 'rung-eval[harness]'" in str(caught.value) and "\n" not in str(caught.value)


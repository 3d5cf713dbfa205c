"""`rung eval` as a user runs it: subprocesses of the installed `rung` on tiny models saved to
disk: models side by side in one table, the same figures in JSON and the run folder, --limit,
a config's backend, lm-evaluation-harness tasks beside rung's, and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

from tests.eval.conftest import CORPUS, save_eval_model  # noqa: E402

RUNG = str(Path(sys.executable).with_name("rung"))

MC_ROWS = [
    {"question": "the cat sat on the", "choices": ["mat.", "dog", "rivers"], "answer": 0},
    {"question": "def add(a, b):\n    return a", "choices": ["+ b", "- b", "* b"], "answer": "+ b"},
    {"question": "rain fell on the", "choices": ["park", "hills;", "stones"], "answer": 1},
    {"question": "print(add(1,", "choices": ["2))", "3))", "4)"], "answer": 0},
    {"question": "the dog ran to the", "choices": ["park", "mat", "trees"], "answer": 0},
]


def rung_cli(*args: str, cwd: Path, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **env}
    environment.pop("RUNG_DEBUG", None)
    proc = subprocess.run([RUNG, *args], capture_output=True, text=True, cwd=cwd, env=environment, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, eval_model_dir):
    """Two models (the shared one and another seed) and two task specs beside their data."""
    folder = tmp_path_factory.mktemp("cli")
    other = save_eval_model(folder / "other-model", seed=1)
    (folder / "tasks").mkdir()
    (folder / "tasks" / "held.txt").write_text("\n".join(CORPUS) * 2, encoding="utf-8")
    (folder / "tasks" / "ppl.yaml").write_text("kind: perplexity\nname: held\npaths: held.txt\n", encoding="utf-8")
    (folder / "tasks" / "mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in MC_ROWS), encoding="utf-8")
    (folder / "tasks" / "mc.yaml").write_text("kind: multiple_choice\npath: mc.jsonl\n", encoding="utf-8")
    return folder, str(eval_model_dir), str(other)


def test_two_models_side_by_side_in_the_table_json_and_run_folder(workspace, eval_backend):
    folder, first, second = workspace
    proc = rung_cli("eval", "-b", "torch", "-m", first, "-m", second, "-o", "precision=fp32", "-o", "device=cpu",
                    "tasks/ppl.yaml", "tasks/mc.yaml", "--json", "out.json", "--output-dir", "run", cwd=folder)
    out = json.loads((folder / "out.json").read_text(encoding="utf-8"))
    assert json.loads((folder / "run" / "results.json").read_text(encoding="utf-8")) == out
    assert [m["label"] for m in out["models"]] == [first, second]
    assert {m["backend"] for m in out["models"]} == {"torch"}
    assert set(out["results"]) == {"held", "mc"}

    # the same figures as the tasks give in this process, on the same weights
    from rung.evaluation import load_task
    from rung.plugins import get_plugins

    registry = get_plugins().registry
    backend = eval_backend("torch")
    for spec, name in (("ppl.yaml", "held"), ("mc.yaml", "mc")):
        expected = load_task(registry, folder / "tasks" / spec).evaluate(backend)
        assert out["results"][name][first] == pytest.approx(expected, rel=1e-6)
    held = out["results"]["held"]
    assert held[first]["bytes"] == held[second]["bytes"] == len(("\n".join(CORPUS) * 2).encode("utf-8"))
    assert held[first]["bits_per_byte"] != pytest.approx(held[second]["bits_per_byte"])  # two models
    assert out["results"]["mc"][second]["count"] == len(MC_ROWS)

    table = proc.stdout  # a row per task and metric, a column per model
    assert "rung eval" in table and first in table and second in table
    rows = {line.split("│")[2].strip(): line for line in table.splitlines() if line.count("│") >= 4}
    for label in (first, second):
        assert f"{held[label]['bits_per_byte']:.4f}" in rows["bits_per_byte"]
        assert f"{out['results']['mc'][label]['accuracy']:.4f}" in rows["accuracy"]
    assert f"{int(held[first]['bytes']):,}" in rows["bytes"]
    assert "results.json" in proc.stderr


def test_config_backends_limit_and_json_on_stdout(workspace):
    """Each run config's backend section is a column, named by its model; --limit; JSON alone on stdout."""
    folder, first, second = workspace
    (folder / "a.yaml").write_text(f"backend: {{name: torch, model: {first}, device: cpu, precision: fp32}}\n",
                                   encoding="utf-8")
    (folder / "b.yaml").write_text(f"backend: {{name: torch, model: {second}, device: cpu}}\n", encoding="utf-8")
    proc = rung_cli("eval", "-c", "a.yaml", "-c", "b.yaml", "tasks/mc.yaml", "tasks/ppl.yaml", "--limit", "2",
                    "--json", "-", cwd=folder)
    out = json.loads(proc.stdout)  # stdout holds only the JSON; the table goes to stderr
    assert out["models"] == [{"label": first, "backend": "torch", "model": first},
                             {"label": second, "backend": "torch", "model": second}]
    assert out["results"]["mc"][first]["count"] == out["results"]["mc"][second]["count"] == 2
    assert out["results"]["held"][first]["bytes"] == len(("\n".join(CORPUS) * 2).encode("utf-8"))  # the file
    assert "accuracy_norm" in proc.stderr and second in proc.stderr


def test_harness_tasks_beside_rungs_own(workspace, tmp_path):
    """A harness multiple-choice task over the same local file: the harness's acc through rung's
    adapter equals rung's own task's accuracy on the same model."""
    pytest.importorskip("lm_eval")
    folder, first, _ = workspace
    harness_dir = tmp_path / "harness-tasks"
    harness_dir.mkdir()
    (harness_dir / "local_mc.yaml").write_text(
        "task: local_mc\n"
        "dataset_path: json\n"
        f"dataset_kwargs: {{data_files: {{test: {json.dumps(str(folder / 'tasks' / 'harness_mc.jsonl'))}}}}}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        "doc_to_text: '{{question}}'\n"
        "doc_to_choice: '{{choices}}'\n"
        "doc_to_target: answer\n"
        "metric_list:\n  - {metric: acc}\n  - {metric: acc_norm}\n", encoding="utf-8")
    rows = [{**r, "answer": r["choices"].index(r["answer"]) if isinstance(r["answer"], str) else r["answer"]}
            for r in MC_ROWS]  # the harness wants the index
    (folder / "tasks" / "harness_mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    proc = rung_cli("eval", "-b", "torch", "-m", first, "-o", "device=cpu", "-o", "precision=fp32", "tasks/mc.yaml",
                    "--harness", "local_mc", "--include-path", str(harness_dir), "--json", "-", cwd=folder,
                    HF_DATASETS_OFFLINE="1", HF_DATASETS_CACHE=str(tmp_path / "datasets-cache"))
    out = json.loads(proc.stdout)
    harness = out["harness"][first]["results"]["local_mc"]
    ours = out["results"]["mc"][first]
    assert harness["acc,none"] == pytest.approx(ours["accuracy"])
    assert harness["acc_norm,none"] == pytest.approx(ours["accuracy_norm"])  # ASCII: bytes = characters
    assert "local_mc" in proc.stderr and "acc" in proc.stderr  # lm-eval's own table


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_errors_are_one_line(workspace):
    folder, first, _ = workspace
    (folder / "typo.yaml").write_text("kind: multiple_choice\npath: tasks/mc.jsonl\nchoice_field: options\n",
                                      encoding="utf-8")
    (folder / "kindless.yaml").write_text("kind: multiple_chioce\npath: tasks/mc.jsonl\n", encoding="utf-8")
    torch_model = ["-b", "torch", "-m", first, "-o", "device=cpu"]

    line = one_line_error(rung_cli("eval", *torch_model, "typo.yaml", cwd=folder, check=False))
    assert "typo.yaml: choice_field: Extra inputs are not permitted" in line
    line = one_line_error(rung_cli("eval", *torch_model, "kindless.yaml", cwd=folder, check=False))
    assert "kindless.yaml: kind: unknown eval task 'multiple_chioce'" in line and "'multiple_choice'" in line
    line = one_line_error(rung_cli("eval", *torch_model, "nowhere.yaml", cwd=folder, check=False))
    assert "no task spec at 'nowhere.yaml'" in line
    # a backend that cannot score tokens (no log-probabilities), before any request is sent
    line = one_line_error(rung_cli("eval", "-b", "anthropic", "-m", "claude-haiku-4-5", "tasks/ppl.yaml", cwd=folder,
                                   check=False, ANTHROPIC_API_KEY="sk-ant-test-not-a-key"))
    assert "cannot score tokens" in line and "sk-ant-test-not-a-key" not in line
    usage = rung_cli("eval", "tasks/ppl.yaml", cwd=folder, check=False)  # click's usage error
    assert usage.returncode == 2 and "Traceback" not in usage.stderr
    assert "Error: name the model: -b BACKEND -m MODEL" in usage.stderr

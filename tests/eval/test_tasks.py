"""rung-eval's task kinds on real tiny models: perplexity and bits per byte, multiple choice,
generation with registered reward functions (python_parses among them), and spec errors.

A model whose weights are all but zero predicts every token with probability 1/V (V its
vocabulary), so what it must score is known without rung: a text of n tokens has log-likelihood
-n ln V, and a choice of k tokens -k ln V. The tests lean on that to check the formulas.
"""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import pytest

pytest.importorskip("torch")

import rung  # noqa: E402
from rung.errors import ConfigError, RungError  # noqa: E402
from rung.evaluation import load_task  # noqa: E402
from rung.plugins import get_plugins  # noqa: E402

# Unicode, multi-byte characters and whitespace runs: bytes and tokens differ on every tokenizer.
TEXTS = {
    "a.txt": "Les élèves étudient le français — naïve café, 日本語 😀 and the cat sat on the mat.\n" * 2,
    "b.txt": "def add(a, b):\n    return a + b\n\n\nprint(add(1, 2))   # three\n",
}


def registry():
    return get_plugins().registry


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def uniform_backend(tokenizer):
    """A `test`-preset torch model whose logits are ~0: p(token) = 1/V everywhere."""
    return rung.backend("torch", model="test", tokenizer=tokenizer, device="cpu", precision="fp32",
                        architecture={"init_std": 1e-6, "max_seq_len": 64})


def vocab_size(backend) -> int:
    return int(backend.model.config.vocab_size)


@pytest.fixture(scope="module")
def tokenizers():
    bpe = rung.tokenizer("bpe", vocab_size=300)
    bpe.train(iter(list(TEXTS.values()) * 10))
    return {"byte": rung.tokenizer("byte"), "bpe": bpe}


@pytest.fixture(scope="module")
def texts_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("texts")
    for name, text in TEXTS.items():
        write(folder / "text", name, text)
    return folder


@pytest.mark.parametrize("kind", ["byte", "bpe"])
def test_bits_per_byte_counts_utf8_bytes_whatever_the_tokenizer(kind, tokenizers, texts_dir):
    tokenizer = tokenizers[kind]
    backend = uniform_backend(tokenizer)
    spec = write(texts_dir, "ppl.yaml", "kind: perplexity\nname: mixed\npaths: [text/*.txt]\n")
    metrics = load_task(registry(), spec).evaluate(backend)

    texts = [TEXTS[name] for name in sorted(TEXTS)]
    tokens = sum(len(tokenizer.encode(text)) for text in texts)
    nbytes = sum(len(text.encode("utf-8")) for text in texts)
    assert nbytes > sum(len(text) for text in texts)  # multi-byte characters are in the text
    assert metrics["bytes"] == nbytes and metrics["tokens"] == tokens
    if kind == "byte":
        assert tokens == nbytes
    else:
        assert tokens < 0.7 * nbytes  # merges: fewer tokens than bytes
    nll = tokens * math.log(vocab_size(backend))  # -log p of n tokens at 1/V each
    assert metrics["perplexity"] == pytest.approx(vocab_size(backend), rel=1e-4)
    assert metrics["bits_per_byte"] == pytest.approx(nll / math.log(2) / nbytes, rel=1e-4)
    assert metrics["byte_perplexity"] == pytest.approx(math.exp(nll / nbytes), rel=1e-4)
    words = sum(len(text.split()) + 1 for text in texts)  # the harness counts the piece after a final newline
    assert metrics["word_perplexity"] == pytest.approx(math.exp(nll / words), rel=1e-4)


def test_perplexity_sums_over_texts_windows_and_data_sources(eval_backend, texts_dir):
    """A real (random) model on texts longer than its context: the task's sums over files equal
    the per-file results added, a stride scores the same tokens with more context, and a data
    source section (rung-pretrain's `files`, paths relative to the spec) reads the same text."""
    pytest.importorskip("rung_pretrain")
    backend = eval_backend("torch")
    each = {name: load_task(registry(), {"kind": "perplexity", "paths": [str(texts_dir / "text" / name)]})
            .evaluate(backend) for name in TEXTS}
    both = load_task(registry(), write(texts_dir, "both.yaml", "kind: perplexity\npaths: [text/a.txt, text/b.txt]\n"))
    together = both.evaluate(backend)

    def nll(m):
        return m["bits_per_byte"] * m["bytes"] * math.log(2)

    assert each["a.txt"]["tokens"] > 64  # longer than the model's context: several windows
    assert together["tokens"] == sum(m["tokens"] for m in each.values())
    assert together["bytes"] == sum(m["bytes"] for m in each.values())
    assert nll(together) == pytest.approx(sum(nll(m) for m in each.values()), rel=1e-6)
    assert math.log(together["perplexity"]) * together["tokens"] == pytest.approx(nll(together), rel=1e-6)

    strided = load_task(registry(), {"kind": "perplexity", "paths": [str(texts_dir / "text" / "a.txt")],
                                     "stride": 16}).evaluate(backend)
    assert strided["tokens"] == each["a.txt"]["tokens"]  # every token once, whatever the windows
    assert strided["bits_per_byte"] != pytest.approx(each["a.txt"]["bits_per_byte"], rel=1e-6)

    source = write(texts_dir, "source.yaml", "kind: perplexity\ndata: {name: files, paths: [text/a.txt, text/b.txt]}\n")
    from_source = load_task(registry(), source).evaluate(backend)
    assert from_source == pytest.approx(together, rel=1e-9)

    first = load_task(registry(), {"kind": "perplexity", "paths": [str(texts_dir / "text" / "*.txt")], "limit": 1})
    assert first.evaluate(backend) == pytest.approx(each["a.txt"], rel=1e-9)


def test_multiple_choice_accuracy_and_length_normalised_accuracy(tokenizers, tmp_path):
    """At p = 1/V per token, the most likely choice is the one of fewest tokens and the most
    likely per byte is the one of most bytes per token: the data makes them disagree."""
    tokenizer = rung.tokenizer("bpe", vocab_size=300)
    tokenizer.train(iter(["banana ok " * 100]))  # " ok" and " banana" become one token each
    backend = uniform_backend(tokenizer)
    short, long, other = "ok", "banana banana banana", "xyz"
    rows = [
        {"question": "pick one:", "choices": [short, long, other], "answer": 0},
        {"context": "and now:", "choices": [long, short, other], "answer": short},   # answer as text, `context`
        {"question": "again:", "choices": [other, long, short], "answer": 2},
        {"question": "last:", "choices": [short, other, long], "answer": long},
    ]
    write_jsonl(tmp_path / "mc.jsonl", rows)
    tokens = {c: len(tokenizer.encode(" " + c)) for c in (short, long, other)}
    assert tokens[short] < tokens[long] < tokens[other]  # the fewest tokens: " ok"
    per_byte = {c: tokens[c] / len(c) for c in tokens}
    assert per_byte[long] < per_byte[short] < per_byte[other]  # the most bytes per token: the long one

    metrics = load_task(registry(), {"kind": "multiple_choice", "path": str(tmp_path / "mc.jsonl")}).evaluate(backend)
    assert metrics == {"accuracy": 0.75, "accuracy_norm": 0.25, "count": 4.0}

    templated = write(tmp_path, "mc.yaml", "kind: multiple_choice\npath: mc.jsonl\nlimit: 2\n"
                                           "template: 'Q: {question} A:'\n")
    with pytest.raises(ConfigError, match=r"mc.jsonl:2: the template names field 'question'"):
        load_task(registry(), templated)  # line 2 has `context`, not `question`


def test_multiple_choice_bad_lines_name_file_and_line(tmp_path):
    cases = [
        ({"question": "q", "choices": ["a", "b"], "answer": 2}, "answer index 2 is outside the 2 choices"),
        ({"question": "q", "choices": ["a", "b"], "answer": "c"}, "answer 'c' is not one of the choices"),
        ({"question": "q", "choices": ["a"], "answer": 0}, "a list of two or more choices"),
        ({"choices": ["a", "b"], "answer": 0}, "no question field"),
    ]
    for i, (row, message) in enumerate(cases):
        path = write_jsonl(tmp_path / f"bad{i}.jsonl", [{"question": "ok", "choices": ["a", "b"], "answer": 0}, row])
        with pytest.raises(ConfigError, match=rf"bad{i}.jsonl:2: .*{message}"):
            load_task(registry(), {"kind": "multiple_choice", "path": str(path)})
    (tmp_path / "notjson.jsonl").write_text('{"question": "q"}\n\nnot json\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"notjson.jsonl:3: not valid JSON"):
        load_task(registry(), {"kind": "multiple_choice", "path": str(tmp_path / "notjson.jsonl")})


def test_generation_scores_completions_with_registered_rewards(eval_backend, tmp_path):
    """References set to what the model answers (greedy) on half the prompts: exact_match is 0.5;
    python_parses (with the prompt) and a second exact_match under its own name score every line."""
    from rung.records import GenerationRequest

    backend = eval_backend("torch")
    prompts = ["def add(a, b):\n", "x = [1, 2,", "the cat sat", "print(1)\n"]
    greedy = [backend.generate(GenerationRequest(prompt=p, raw=True, max_tokens=8, temperature=0.0)).text
              for p in prompts]
    rows = [{"prompt": p, "reference": g if i % 2 == 0 else "not this"}
            for i, (p, g) in enumerate(zip(prompts, greedy))]
    write_jsonl(tmp_path / "gen.jsonl", rows)
    spec = write(tmp_path, "gen.yaml", "kind: generation\npath: gen.jsonl\nmax_tokens: 8\nrewards:\n"
                                       "  - {name: exact_match, collapse_whitespace: false}\n"
                                       "  - {name: python_parses, include_prompt: true, allow_empty: true}\n"
                                       "  - {name: exact_match, ignore_case: true}\n")
    task = load_task(registry(), spec)
    assert task.name == "gen"
    metrics = task.evaluate(backend)

    def parses(code):
        try:
            ast.parse(code)
            return 1.0
        except SyntaxError:
            return 0.0

    assert metrics["exact_match"] == 0.5 and metrics["exact_match_2"] == 0.5
    assert metrics["python_parses"] == pytest.approx(sum(parses(p + g) for p, g in zip(prompts, greedy)) / 4)
    assert metrics["count"] == 4.0

    with pytest.raises(RungError, match=r"rewards\[1\].*unknown reward function 'exact_mtch'"):
        load_task(registry(), {"kind": "generation", "path": str(tmp_path / "gen.jsonl"),
                               "rewards": ["exact_match", "exact_mtch"]})


@pytest.mark.parametrize("completion, options, prompt, expected", [
    ("def f(x):\n    return x\n", {}, None, 1.0),
    ("Here it is:\n```python\nimport os\nprint(os.sep)\n```\nEnjoy.", {}, None, 1.0),
    ("```\nx = (1,\n```", {}, None, 0.0),
    ("```py\nx = 1\n", {}, None, 1.0),                       # a fence never closed: what follows it
    ("def f(:\n", {}, None, 0.0),
    ("   \n", {}, None, 0.0),                                 # nothing written is no answer...
    ("", {"allow_empty": True}, None, 1.0),                   # ...unless asked
    ("    return a + b\n", {}, "def add(a, b):\n", 0.0),      # an indented body alone does not parse
    ("    return a + b\n", {"include_prompt": True}, "def add(a, b):\n", 1.0),
    ('s = "\\d"\n', {}, None, 1.0),                           # a SyntaxWarning still parses
    ("x = 1\x00", {}, None, 0.0),                             # a NUL byte: ValueError, not a crash
])
def test_python_parses(completion, options, prompt, expected):
    reward = get_plugins().registry.get("reward_function", "python_parses")
    fn = reward.load()(reward.options_model()(**options))
    assert fn(completion, None, prompt=prompt) == expected


def test_spec_errors_name_the_spec(tmp_path):
    typo = write(tmp_path, "typo.yaml", "kind: perplexity\npath: [x.txt]\n")
    with pytest.raises(ConfigError, match=rf"^{typo}: path: Extra inputs"):
        load_task(registry(), typo)
    unknown = write(tmp_path, "unknown.yaml", "kind: perplexty\npaths: [x.txt]\n")
    with pytest.raises(RungError, match=rf"^{unknown}: kind: unknown eval task 'perplexty' .*'perplexity'"):
        load_task(registry(), unknown)
    neither = write(tmp_path, "neither.yaml", "kind: perplexity\n")
    with pytest.raises(ConfigError, match=rf"^{neither}: .*either 'paths'.* or 'data'"):
        load_task(registry(), neither)
    missing = write(tmp_path, "missing.yaml", "kind: perplexity\npaths: [nowhere.txt, '*.md']\n")
    with pytest.raises(ConfigError, match=rf"task 'missing': no file {tmp_path / 'nowhere.txt'}"):
        load_task(registry(), missing)
    with pytest.raises(ConfigError, match=r"trainer.eval_tasks\[0\]: a task spec needs 'kind'"):
        load_task(registry(), {"paths": ["x"]}, "trainer.eval_tasks[0]")

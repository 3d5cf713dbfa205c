"""Hostile documents, generated, fed to every loader that reads a user's file: each one ends in
a RungError of one short line or in a valid value, never in another exception (a traceback).

The loaders are found, not listed: the YAML ones are the three documents a user writes (a run
config, a serve config, an eval task spec), and the file readers are every registered data
source and eval task whose options take a `path` or `paths` (rung.plugins' registry), so a new
JSONL source is fuzzed as soon as it is registered. The words the documents are made of are
the registry's too: its names, every option's field name and every string default (`messages`,
`role`, `chosen`, ...), so generated documents reach past the first check into each parser.

Documents are random JSON/YAML values, valid documents with one part replaced, and hand-built
bombs (deep nesting, nested and recursive aliases, tags, numbers past Python's int limit), each
then damaged at the byte level (BOMs, CRLF, NUL, bytes that are not UTF-8, truncation, very
long lines). Bounded by hypothesis' settings (few examples, derandomized) rather than a clock.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rung.errors import RungError

FUZZ = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))
MAX_MESSAGE = 600  # an error line quotes at most a cut excerpt (rung.errors.excerpt)
MAX_LINES = 11  # a config's error says each of its first ten problems on a line (and how many more)
BIG = 60_000  # a "huge" value: large enough to show an error that echoes it, small enough for PyYAML
FILE_FIELDS = ("path", "paths")
VALID_RECORD = {"messages": [{"role": "user", "content": "1+1="}, {"role": "assistant", "content": "2"}],
                "prompt": "1+1=", "completion": "2", "chosen": "2", "rejected": "3", "question": "1+1=",
                "choices": ["2", "3"], "answer": "2", "reference": "2", "text": "one plus one is two"}


# ---------------------------------------------------------------- what the registry offers


@pytest.fixture(scope="module")
def registry():
    from rung.plugins import get_plugins

    return get_plugins().registry


def registry_words(registry) -> list[str]:
    """Registered names, option field names and string defaults: what real documents say."""
    words: set[str] = {"name", "kind", "models", "server", "limits", "output_dir", "seed"}
    for kind, items in registry.items.items():
        words.add(kind)
        for name, descriptor in items.items():
            words.add(name.split("/")[0])
            try:
                fields = descriptor.options_model().model_fields
            except RungError:
                continue
            for field_name, field in fields.items():
                words.add(field_name)
                if isinstance(field.default, str) and 0 < len(field.default) < 40:
                    words.add(field.default)
    return sorted(words)


def file_readers(registry) -> list[tuple[str, str, str, str]]:
    """(kind, name, field, "file" or "folder") of every data source and eval task whose options
    take a path: a field the description calls a folder, never a file, is given the folder."""
    found = []
    for kind in ("data_source", "eval_task"):
        for name, descriptor in sorted(registry.items[kind].items()):
            fields = descriptor.options_model().model_fields
            for field_name in FILE_FIELDS:
                if field_name in fields:
                    said = (fields[field_name].description or "").lower()
                    found.append((kind, name, field_name, "folder" if "folder" in said and "file" not in said
                                  else "file"))
    return found


def _reader_ids() -> list[tuple[str, str, str, str]]:
    from rung.plugins import get_plugins

    return file_readers(get_plugins().registry)


READERS = _reader_ids()
# hf_dataset's path is a hub id or a `datasets` builder: each example would build an Arrow cache
# in ~/.cache through `datasets` (seconds), and its source turns every exception into one line.
SKIPPED = {("data_source", "hf_dataset")}


# ---------------------------------------------------------------- documents


def values(words: list[str]) -> st.SearchStrategy:
    leaves = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12),
                       st.sampled_from(words), st.just("x" * BIG))
    keys = st.sampled_from(words) | st.text(max_size=6)
    return st.recursive(leaves, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=5),
                        max_leaves=20)


@st.composite
def replaced(draw, base: Any, words: list[str]) -> Any:
    """`base` with one part replaced by a random value, removed, or a key added beside it."""
    import copy

    doc = copy.deepcopy(base)
    node, path = doc, []
    while isinstance(node, (dict, list)) and node and draw(st.booleans()):
        key = draw(st.sampled_from(sorted(node) if isinstance(node, dict) else list(range(len(node)))))
        path.append((node, key))
        node = node[key]
    if not path:
        return draw(values(words))
    parent, key = path[-1]
    action = draw(st.sampled_from(["replace", "remove", "add", "name"]))
    if action == "replace":
        parent[key] = draw(values(words))
    elif action == "remove":
        del parent[key]
    elif action == "add" and isinstance(parent, dict):
        parent[draw(st.sampled_from(words))] = draw(values(words))
    else:
        parent[key] = draw(st.sampled_from(words))
    return doc


def bombs() -> st.SearchStrategy[str]:
    depth = st.integers(1, 3000)
    laughs = st.tuples(st.integers(2, 12), st.integers(2, 12)).map(
        lambda lw: "\n".join(["a0: &a0 [lol, lol]"] + [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * lw[1]) + "]"
                                                        for i in range(1, lw[0])]) + "\n")
    return st.one_of(
        depth.map(lambda n: "[" * n + "]" * n),
        depth.map(lambda n: "[" * n),
        depth.map(lambda n: '{"a": ' * n + "1" + "}" * n),
        depth.map(lambda n: "".join("  " * i + "a:\n" for i in range(n))),
        laughs,
        st.sampled_from(["&a [*a]", "&a {b: *a}", "a: &x {b: 1}\nc: {<<: *x, d: 2}", "<<: 3", "a: *nowhere",
                         "--- 1\n--- 2\n", "? [1, 2]\n: x", "? {a: 1}\n: x", "a: !!python/object:os.system x",
                         "a: !!binary '@@@'", "a: !!timestamp 2020-13-45", "a: 2020-02-30", "a: !!set {1, 2}",
                         "a: !!omap [1]", "a: !!int x", "a: !!float x", "a: 1:2:3:4", "%YAML 9.9\n--- a",
                         "!!str", "a: |\n bad\n  indent\n x", "\t- tab", "'unclosed", '"\\uZZZZ"', "{a: 1, a: 2}"]),
        st.integers(4000, 6000).map(lambda n: "a: " + "1" * n),
        st.integers(4000, 6000).map(lambda n: "1" * n),
        st.integers(4000, 6000).map(lambda n: "a: 0x" + "f" * n),
        st.integers(1, 4).map(lambda n: "a: " + "1e" + "9" * n),
    )


DAMAGE = ["bom", "crlf", "truncate", "nul", "not_utf8", "control", "long_line"]


@st.composite
def damaged(draw, text: str) -> bytes:
    """`text` as UTF-8 with up to three kinds of byte damage."""
    data = text.encode("utf-8", "surrogatepass")
    for kind in draw(st.lists(st.sampled_from(DAMAGE), max_size=3)):
        at = draw(st.integers(0, len(data)))
        if kind == "bom":
            data = b"\xef\xbb\xbf" + data
        elif kind == "crlf":
            data = data.replace(b"\n", b"\r\n")
        elif kind == "truncate":
            data = data[:at]
        elif kind == "nul":
            data = data[:at] + b"\x00" + data[at:]
        elif kind == "not_utf8":
            data = data[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80",
                                                     b"\xc0\xaf"])) + data[at:]
        elif kind == "control":
            data = data[:at] + draw(st.sampled_from(["\x1b", "\x85", "\u2028", "\ufeff", "\x7f", "\ud800"])).encode(
                "utf-8", "surrogatepass") + data[at:]
        else:
            data += b"\n" + draw(st.sampled_from([b"a", b"[", b"{", b" ", b"\xff"])) * BIG
    return data


def as_text(value: Any, style: str) -> str:
    if style == "json":
        return json.dumps(value)
    return yaml.safe_dump(value, allow_unicode=True, width=float("inf") if style == "yaml_wide" else 80)


def yaml_documents(base: Any, words: list[str]) -> st.SearchStrategy[bytes]:
    styles = st.sampled_from(["json", "yaml", "yaml_wide"])
    text = st.one_of(
        st.tuples(replaced(base, words), styles).map(lambda v: as_text(*v)),
        st.tuples(values(words), styles).map(lambda v: as_text(*v)),
        bombs(),
        st.text(max_size=200),
    )
    return text.flatmap(damaged)


def jsonl_documents(words: list[str]) -> st.SearchStrategy[bytes]:
    line = st.one_of(
        replaced(VALID_RECORD, words).map(json.dumps),
        values(words).map(json.dumps),
        st.just(json.dumps(VALID_RECORD)),
        bombs(),
        st.text(max_size=40),
        st.just(""),
    )
    return st.lists(line, min_size=1, max_size=6).map(lambda lines: "\n".join(lines) + "\n").flatmap(damaged)


# ---------------------------------------------------------------- the check


def ends_well(load: Callable[[], Any]) -> None:
    """`load()` returns, or raises a RungError of a few short lines; anything else fails the test."""
    try:
        load()
    except RungError as exc:
        lines = str(exc).splitlines()
        assert lines and len(lines) <= MAX_LINES, f"a RungError of {len(lines)} lines: {str(exc)[:300]!r}"
        for line in lines:
            assert len(line) <= MAX_MESSAGE, f"a RungError line of {len(line)} characters: {line[:300]!r}..."


# ---------------------------------------------------------------- the YAML documents a user writes


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A folder with valid data beside the documents, so a valid document loads whole."""
    path = tmp_path_factory.mktemp("fuzz")
    for name in ("data.jsonl", "data.py"):  # a folder reader (stdlib) reads only its .py
        (path / name).write_text(json.dumps(VALID_RECORD) + "\n")
    return path


SERVE_CONFIG = {"server": {"port": 8000}, "limits": {"max_tokens": 8},
                "models": [{"name": "m", "backend": {"name": "torch", "model": "test"}, "tokenizer": {"name": "byte"}}]}


def yaml_loaders(registry, folder: Path) -> dict[str, tuple[Any, Callable[[Path], Any]]]:
    """Each YAML document kind: a valid document of it, and its loader."""
    from rung.config import load_config
    from rung.evaluation import load_task
    from rung_serve.config import load_serve_config

    task = {"kind": sorted(registry.items["eval_task"])[0]}
    fields = registry.get("eval_task", task["kind"]).options_model().model_fields
    task.update({f: str(folder / "data.jsonl") for f in FILE_FIELDS if f in fields})
    run_config = {"output_dir": str(folder / "out"), "seed": 0,
                  "backend": {"name": "torch", "model": "test", "device": "cpu"}, "tokenizer": {"name": "byte"},
                  "data": {"name": "chat_jsonl", "path": str(folder / "data.jsonl")},
                  "trainer": {"name": "sft", "steps": 2, "batch_size": 2}}
    return {
        "run config": (run_config, lambda path: load_config(path, registry=registry)),
        "serve config": (SERVE_CONFIG, lambda path: load_serve_config(path, registry)),
        "task spec": (task, lambda path: load_task(registry, path)),
    }


@pytest.mark.parametrize("document", ["run config", "serve config", "task spec"])
def test_valid_documents_load(registry, folder, document):
    base, load = yaml_loaders(registry, folder)[document]
    path = folder / "valid.yaml"
    path.write_text(yaml.safe_dump(base))
    assert load(path) is not None  # the base the fuzz damages is itself valid: the fuzz reaches past it


@pytest.mark.parametrize("document", ["run config", "serve config", "task spec"])
def test_hostile_yaml_documents_end_in_a_rung_error_or_a_value(registry, folder, document):
    base, load = yaml_loaders(registry, folder)[document]
    path = folder / f"{document.replace(' ', '_')}.yaml"

    @given(data=yaml_documents(base, registry_words(registry)))
    @FUZZ
    def fuzz(data: bytes) -> None:
        path.write_bytes(data)
        ends_well(lambda: load(path))

    fuzz()


# ---------------------------------------------------------------- the registered file readers


def read_whole(registry, kind: str, name: str, field: str, target: Path) -> Any:
    """Build the registered `kind` `name` with `field` naming `target`, and read all it reads."""
    from rung.evaluation import load_task
    from rung.plugins import get_plugins
    from rung.runner import build, validate_section

    if kind == "data_source":
        options = validate_section(registry, kind, {"name": name, field: str(target)}, "data")
        return list(build(get_plugins(), kind, options).read())
    task = load_task(registry, {"kind": name, field: [str(target)]})
    return task.texts() if hasattr(task, "texts") else task  # perplexity reads its files when it scores


def test_every_reader_is_found_and_reads_a_valid_file(registry, folder):
    readers = file_readers(registry)
    names = {name for _, name, _, _ in readers}
    assert {"chat_jsonl", "preference_jsonl", "prompts_jsonl", "files", "multiple_choice", "generation"} <= names
    for kind, name, field, takes in readers:
        if (kind, name) not in SKIPPED:
            assert read_whole(registry, kind, name, field, folder if takes == "folder" else folder / "data.jsonl")


@pytest.mark.parametrize("kind,name,field,takes", [r for r in READERS if r[:2] not in SKIPPED],
                         ids=[f"{r[1]}.{r[2]}" for r in READERS if r[:2] not in SKIPPED])
def test_hostile_jsonl_files_end_in_a_rung_error_or_a_value(registry, tmp_path_factory, kind, name, field, takes):
    where = tmp_path_factory.mktemp(name)
    files = [where / "doc.jsonl", where / "doc.py"]  # a folder reader reads the .py (stdlib) or both

    @given(data=jsonl_documents(registry_words(registry)))
    @FUZZ
    def fuzz(data: bytes) -> None:
        for path in files:
            path.write_bytes(data)
        ends_well(lambda: read_whole(registry, kind, name, field, where if takes == "folder" else files[0]))

    fuzz()


# ---------------------------------------------------------------- what the fuzz found, kept


@pytest.mark.parametrize("text,said", [
    ("a: 1\x00\n", r":1: invalid YAML: unacceptable character #x0000"),  # PyYAML's ReaderError, raised early
    ("a: 1\nb: \x1b\n", r":2: invalid YAML: unacceptable character #x001b"),
    ("a: " + "1" * 5000 + "\n", r":1: invalid YAML: cannot read '1111.*\(5000 characters\) as int \(Exceeds"),
    ("a: [1, {b: 2020-02-30}]\n", r":1: invalid YAML: cannot read '2020-02-30' as timestamp"),
    ("a: !!int x\n", r":1: invalid YAML: cannot read 'x' as int"),
])
def test_yaml_the_fuzz_broke_is_one_line_naming_the_line(tmp_path, text, said):
    from rung.errors import ConfigError
    from rung.yaml_lines import load_yaml_with_lines

    path = tmp_path / "hostile.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"^{path}{said}"):
        load_yaml_with_lines(path)


@pytest.mark.parametrize("line,said", [
    ("[" * 100_000, "JSON nested too deeply to read"),  # the decoder's RecursionError
    ('{"a": ' * 5000 + "1" + "}" * 5000, "JSON nested too deeply to read"),
    ('{"n": ' + "1" * 5000 + "}", r"cannot be read as JSON \(Exceeds the limit \(4300 digits\)"),  # a ValueError
])
def test_jsonl_the_fuzz_broke_is_one_line_naming_file_and_line(tmp_path, line, said):
    from rung.errors import ConfigError
    from rung.jsonl import read_jsonl

    path = tmp_path / "hostile.jsonl"
    path.write_text('{"ok": 1}\n' + line + "\n")
    with pytest.raises(ConfigError, match=rf"^{path}:2: {said}"):
        list(read_jsonl(path))
    assert [value for value, _ in read_jsonl(path, skip_invalid=True)] == [{"ok": 1}]  # a best-effort reader skips it

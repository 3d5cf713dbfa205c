"""Corpus sources: files (text, code, JSONL, Parquet, globs), the stdlib, HF datasets."""

from __future__ import annotations

import gzip
import json

import pytest

from rung.api import make_config_section
from rung.errors import ConfigError, RungError
from rung.interfaces import DataSource
from rung.records import Document
from rung.runner import build
from rung.plugins import get_plugins
from rung_pretrain.sources.base import Skip


def source(name: str, **options):
    return build(get_plugins(), "data_source", make_config_section("data_source", {"name": name, **options}))


def items(src):
    return [item for key, _ in src.units() for item in src.read_unit(key)]


def test_files_reads_folders_globs_and_skips_what_is_not_text(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# Title\n\nsome *markdown*")
    (tmp_path / "docs" / "b.py").write_text("print('hi')\n")
    (tmp_path / "docs" / "bad.txt").write_bytes(b"caf\xe9 latin-1, not UTF-8")
    (tmp_path / "docs" / "binary.txt").write_bytes(b"abc\x00def")
    (tmp_path / "docs" / "image.png").write_bytes(b"\x89PNG")  # not a text suffix: ignored in folders
    (tmp_path / "docs" / ".hidden").mkdir()
    (tmp_path / "docs" / ".hidden" / "x.txt").write_text("hidden")
    (tmp_path / "bom.txt").write_bytes("\ufeffwith a BOM".encode())
    src = source("files", paths=[str(tmp_path / "docs"), str(tmp_path / "*.txt")])
    assert isinstance(src, DataSource)
    got = items(src)
    docs = {d.id: d.text for d in got if isinstance(d, Document)}
    assert docs == {
        "files:a.md": "# Title\n\nsome *markdown*",
        "files:b.py": "print('hi')\n",
        "files:bom.txt": "with a BOM",
    }
    assert sorted(s.reason for s in got if isinstance(s, Skip)) == ["undecodable", "undecodable"]
    assert [d.text for d in src.read()] == list(docs.values())  # DataSource.read: documents only
    with pytest.raises(RungError, match="no file matches"):
        source("files", paths=[str(tmp_path / "*.nothing")]).units()
    with pytest.raises(RungError, match="is not a file, folder"):
        source("files", paths=str(tmp_path / "missing")).units()


def test_jsonl_and_gzip_jsonl_records(tmp_path):
    lines = [json.dumps({"text": "first", "n": 1}), "{broken", json.dumps({"content": "no text field"}),
             json.dumps({"text": 7}), "", json.dumps({"text": "ünïcode ✓"})]
    (tmp_path / "a.jsonl").write_text("\n".join(lines) + "\n")
    with gzip.open(tmp_path / "b.jsonl.gz", "wt") as handle:
        handle.write(json.dumps({"body": "zipped"}) + "\n")
    (tmp_path / "c.jsonl").write_bytes(b'{"text": "\xff\xfe"}\n')
    got = items(source("files", paths=[str(tmp_path / "a.jsonl"), str(tmp_path / "c.jsonl")]))
    assert [d.text for d in got if isinstance(d, Document)] == ["first", "ünïcode ✓"]
    assert [s.reason for s in got if isinstance(s, Skip)] == [
        "unparsable",
        "no_text_field",
        "no_text_field",
        "undecodable",
    ]
    zipped = items(source("files", paths=str(tmp_path / "b.jsonl.gz"), text_field="body"))
    assert [d.text for d in zipped] == ["zipped"] and zipped[0].id == "files:b.jsonl.gz#1"


def test_parquet_text_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["one", None, "three"], "n": [1, 2, 3]}), tmp_path / "t.parquet", row_group_size=2)
    got = items(source("files", paths=str(tmp_path / "t.parquet")))
    assert [d.text for d in got if isinstance(d, Document)] == ["one", "three"]
    assert [s.reason for s in got if isinstance(s, Skip)] == ["no_text_field"]
    with pytest.raises(RungError, match="no column 'body'"):
        items(source("files", paths=str(tmp_path / "t.parquet"), text_field="body"))


def test_stdlib_lists_python_sources():
    src = source("stdlib")
    units = src.units()
    assert len(units) > 500 and all(key.endswith(".py") for key, _ in units)
    assert sum(size for _, size in units) > 10_000_000
    assert not any("site-packages" in key for key, _ in units)
    without_tests = source("stdlib", include_tests=False).units()
    assert len(without_tests) < len(units)
    key = next(k for k, _ in units if k.endswith("/os.py") and "/test" not in k)
    (doc,) = src.read_unit(key)
    assert doc.id == "stdlib:os.py" and "def " in doc.text


def test_hf_dataset_from_local_json(tmp_path):
    pytest.importorskip("datasets")
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps({"text": f"row {i}", "label": i}) for i in range(5)))
    src = source("hf_dataset", path="json", data_files=str(path), max_documents=4)
    assert [d.text for d in src.read()] == ["row 0", "row 1", "row 2", "row 3"]
    with pytest.raises(RungError, match="no column 'body'"):
        source("hf_dataset", path="json", data_files=str(path), text_field="body").units()


def test_corpus_options_validate_each_source():
    with pytest.raises(ConfigError, match="unknown data source 'filez'"):
        make_config_section("data_source", {"name": "corpus", "sources": [{"name": "filez"}]})
    with pytest.raises(ConfigError, match="paths"):
        make_config_section("data_source", {"name": "corpus", "sources": [{"name": "files"}]})
    corpus = make_config_section("data_source", {"name": "corpus", "sources": ["stdlib"], "clean": {"minhash": False}})
    assert corpus.clean.minhash.enabled is False and corpus.sources[0].name == "stdlib"

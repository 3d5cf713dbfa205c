"""`prepare` end to end on a corpus made here: duplicates, a near-duplicate, undecodable and
empty documents, JSONL and Parquet; the report, the shards, the tokenizer through
transformers, reuse of an up-to-date manifest, and the `rung prepare` command."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from rung_pretrain import prepare
from rung_pretrain.reader import TokenShards

WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho "
         "sigma tau upsilon phi chi psi omega def return class import yield").split()


def make_corpus(folder: Path) -> dict[str, str]:
    """~30 files; returns the texts that must survive cleaning, by document id."""
    rng = random.Random(0)
    folder.mkdir(parents=True)
    keep = {}
    for i in range(24):
        lines = [" ".join(rng.choice(WORDS) for _ in range(10)) for _ in range(12)]
        text = "\n".join(lines)
        (folder / f"doc{i:02d}.txt").write_text(text + "\n  \n")  # trailing space: stripped
        keep[f"files:doc{i:02d}.txt"] = text
    (folder / "copy_of_doc03.txt").write_text((folder / "doc03.txt").read_text())  # exact duplicate
    near = keep["files:doc05.txt"].replace("\n", " extra\n", 1)  # one word more: near duplicate
    (folder / "near_doc05.txt").write_text(near)
    (folder / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))  # undecodable
    (folder / "empty.md").write_text("")
    (folder / "decomposed.md").write_text("Cafe\u0301 cre\u0300me bru\u0302le\u0301e \x07 on the menu")
    keep["files:decomposed.md"] = "Café crème brûlée  on the menu"
    (folder / "rows.jsonl").write_text(json.dumps({"text": "a jsonl row of text"}) + "\n{oops\n")
    keep["files:rows.jsonl#1"] = "a jsonl row of text"
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["a parquet row", "another parquet row"]}), folder / "rows.parquet")
    keep["files:rows.parquet#1"] = "a parquet row"
    keep["files:rows.parquet#2"] = "another parquet row"
    return keep


def config(tmp_path: Path, corpus: Path, **data) -> dict:
    return {
        "output_dir": str(tmp_path / "run"),
        "backend": {"name": "torch", "model": "test"},
        "tokenizer": {"name": "bpe", "vocab_size": 400},
        "data": {"name": "corpus", "sources": [{"name": "files", "paths": [str(corpus)]}],
                 "shards": {"val_fraction": 0.1}, "workers": 2, **data},
    }


def decoded_documents(data) -> dict[str, str]:
    """Every document in the shards, decoded (split at eos)."""
    texts = []
    for split in ("train", "validation"):
        shards = TokenShards(data.dir, split)
        for array in shards.arrays:
            ids = np.asarray(array).tolist()
            doc: list[int] = []
            for token in ids:
                if token == data.tokenizer.eos_id:
                    texts.append(data.tokenizer.decode(doc))
                    doc = []
                else:
                    doc.append(token)
    return texts


def test_prepare_cleans_dedups_trains_and_shards(tmp_path):
    corpus = tmp_path / "corpus"
    keep = make_corpus(corpus)
    data = prepare(config(tmp_path, corpus), progress=False)
    assert not data.skipped and data.dir == tmp_path / "run" / "data"

    steps = {entry["step"]: entry for entry in data.report}
    assert steps["read"]["removed"]["undecodable"]["docs"] == 1
    assert steps["read"]["removed"]["unparsable"]["docs"] == 1
    assert steps["length"]["removed"]["empty"]["docs"] == 1
    assert steps["normalize"]["changed"] == 1 and steps["control chars"]["changed"] == 1
    assert steps["dedup"]["removed"]["exact_duplicate"]["docs"] == 1
    assert steps["dedup"]["removed"]["near_duplicate"]["docs"] == 1
    assert steps["dedup"]["docs_out"] == len(keep)
    for entry in data.report:  # bytes add up in every step
        assert entry["bytes_in"] - entry["bytes_out"] >= sum(r["bytes"] for r in entry["removed"].values())

    # the shards hold exactly the cleaned documents, each ending with eos (MinHash keeps
    # one of doc05 and its near duplicate: either may stay)
    decoded = decoded_documents(data)
    near = (corpus / "near_doc05.txt").read_text()
    expected = sorted(keep.values()) if near not in decoded else sorted(
        [t for k, t in keep.items() if k != "files:doc05.txt"] + [near])
    assert sorted(decoded) == expected
    manifest = json.loads((data.dir / "manifest.json").read_text())
    assert manifest["documents"] == len(keep) and manifest["dtype"] == "<u2"
    assert manifest["splits"]["validation"]["documents"] >= 1
    assert manifest["splits"]["train"]["documents"] + manifest["splits"]["validation"]["documents"] == len(keep)
    assert manifest["tokenizer"]["vocab_size"] == data.tokenizer.vocab_size <= 400
    assert manifest["sources"][0]["name"] == "files" and manifest["sources"][0]["units"] == 31

    # the tokenizer trained on the clean corpus loads in transformers with the same ids
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(data.dir / "tokenizer")
    text = keep["files:doc07.txt"]
    assert hf(text)["input_ids"] == data.tokenizer.encode(text)
    assert data.unigram_loss() > 0
    batch = next(data.train_batches(batch_size=2, seq_len=8, seed=0))
    assert batch["input_ids"].shape == (2, 8)

    # up to date: nothing redone; a changed source: redone
    again = prepare(config(tmp_path, corpus), progress=False)
    assert again.skipped and again.manifest["fingerprint"] == manifest["fingerprint"]
    assert again.tokenizer.encode(text) == data.tokenizer.encode(text)
    (corpus / "doc00.txt").write_text("a different first document, long enough")
    assert not prepare(config(tmp_path, corpus), progress=False).skipped


def test_rung_prepare_command_without_dedup(tmp_path):
    from click.testing import CliRunner

    from rung.cli.main import cli

    corpus = tmp_path / "corpus"
    keep = make_corpus(corpus)
    path = tmp_path / "run.yaml"
    import yaml

    settings = config(tmp_path, corpus, workers=1)
    settings["output_dir"] = str(corpus / "run")  # outputs inside the corpus are never read back
    settings["tokenizer"] = {"name": "byte"}
    path.write_text(yaml.safe_dump(settings))
    args = ["prepare", str(path), "data.clean.minhash=false", "data.clean.exact_dedup=false",
            "--quiet"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "cleaning report" in result.output and "dedup" not in result.output
    manifest = json.loads((corpus / "run" / "data" / "manifest.json").read_text())
    assert manifest["documents"] == len(keep) + 2  # the duplicate and the near duplicate stay
    assert manifest["tokenizer"]["class"] == "ByteTokenizer" and manifest["tokenizer"]["vocab_size"] == 263
    result = CliRunner().invoke(cli, args)
    assert "up to date" in result.output


def test_rung_prepare_draws_each_stage_with_what_its_tasks_counted(tmp_path):
    """Progress bars are fed by the worker tasks' progress files: each stage's bar ends at the
    documents its tasks saw (summed over both workers)."""
    import re
    import subprocess
    import sys

    import yaml

    corpus = tmp_path / "corpus"
    keep = make_corpus(corpus)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config(tmp_path, corpus)))
    rung = str(Path(sys.executable).with_name("rung"))
    proc = subprocess.run([rung, "prepare", str(path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    bars = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w[\w +]*?)\s+━.* (\d+) docs\s*$",
                                                             proc.stdout + proc.stderr, re.M)}
    read = len(keep) + 2 + 3  # + the exact and near duplicates, + the undecodable, empty and bad-JSON rows
    assert bars == {"read + clean": read, "remove duplicates": len(keep) + 2, "token shards": len(keep)}


def test_bad_config_is_a_clear_error(tmp_path):
    from rung.errors import ConfigError, RungError

    with pytest.raises(ConfigError, match="no 'data' section"):
        prepare({"backend": {"name": "torch"}})
    with pytest.raises(RungError, match="not a file, folder"):
        prepare(config(tmp_path, tmp_path / "missing"), progress=False)

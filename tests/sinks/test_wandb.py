"""The `wandb` sink in a real `rung run`, offline (no network, no account): the offline run's
own record file holds every logged step with the values of metrics.jsonl, its config is the
run's saved config, and the API key given to the sink is in no file written, no output and
not in the saved config.yaml."""

from __future__ import annotations

import json
import struct

import pytest
import yaml

pytest.importorskip("wandb")
pytest.importorskip("rung_torch")

from rung.errors import RungError  # noqa: E402
from tests.sinks.tiny_run import jsonl_records, tiny_run  # noqa: E402

SECRET = "wandb-test-key-0123456789abcdef0123456789abcdef"


def wandb_records(path):
    """The protobuf records of an offline run's `run-*.wandb` file.

    The file is a LevelDB-style log (wandb's own format): a 7-byte header (':W&B', magic, version),
    then 32 KiB blocks of chunks, each a 7-byte header (crc32, length, type: full, first, middle,
    last) and its bytes; a block's tail shorter than a header is padding."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, position, pending, out = 32768, 7, b"", []
    while position + 7 <= len(data):
        left = block - position % block
        if left < 7:
            position += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[position:position + 7])
        if kind == 0 and length == 0:  # zero padding at the end of the last block
            break
        pending += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            out.append(record)
            pending = b""
    return out


def items(entries) -> dict:
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in entries}


def test_offline_run_holds_what_the_run_logged_and_no_secret(tmp_path):
    home, elsewhere = tmp_path / "home", tmp_path / "wandb-dir"
    env = {"WANDB_MODE": "offline", "WANDB_DIR": str(elsewhere), "HOME": str(home),
           "WANDB_CACHE_DIR": str(home / "cache"), "WANDB_CONFIG_DIR": str(home / "config"),
           "WANDB_DATA_DIR": str(home / "data")}
    env.pop("WANDB_API_KEY", None)
    run_dir, output = tiny_run(tmp_path, [{"name": "wandb", "mode": "offline", "project": "rung-tests",
                                           "api_key": SECRET}], env)

    # The W&B run lives under the run folder (not WANDB_DIR), named after the run folder.
    [offline] = list((run_dir / "wandb").glob("offline-run-*"))
    assert not elsewhere.exists()
    [record_file] = list(offline.glob("run-*.wandb"))
    records = wandb_records(record_file)
    [run] = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert run.display_name == "run" and run.project == "rung-tests"
    # Its config is the run's saved config.yaml (which rung writes with every secret left out).
    config = {item.key: json.loads(item.value_json) for item in run.config.update if item.key != "_wandb"}
    assert config == yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    assert config["trainer"]["steps"] == 6 and config["logging"]["sinks"][1]["project"] == "rung-tests"

    # Every logged step is one history row: the jsonl records of that step merged, same values
    # (numbers and the text of the chat template's name alike).
    expected: dict[int, dict] = {}
    for line in jsonl_records(run_dir):
        expected.setdefault(line["step"], {}).update({k: v for k, v in line.items() if k != "step"})
    rows = [items(r.history.item) for r in records if r.WhichOneof("record_type") == "history"]
    got = {row["_step"]: {k: v for k, v in row.items() if not k.startswith("_")} for row in rows}
    assert sorted(got) == [0, 1, 2, 3, 4, 5, 6] and got == expected
    assert any(isinstance(v, str) for v in got[0].values())

    # The key is nowhere: not in a file under the test's folders (run folder, WANDB_DIR, HOME),
    # not in the saved config.yaml, not in what the run printed.
    assert SECRET not in output
    assert "api_key" not in (run_dir / "config.yaml").read_text(encoding="utf-8")
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.name != "run.yaml"]
    assert len(written) > 10
    assert [p for p in written if SECRET.encode() in p.read_bytes()] == []


def test_online_without_a_key_is_one_line(tmp_path, monkeypatch):
    from rung_wandb.sink import WandbSink, WandbSinkOptions

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "home" / "config"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    with pytest.raises(RungError) as caught:
        WandbSink(WandbSinkOptions(mode="online"), run_dir=tmp_path / "run")
    assert str(caught.value).startswith("wandb sink: could not start a W&B run: ")
    assert "\n" not in str(caught.value) and "API key" in str(caught.value)


def test_the_key_is_secret_in_options():
    from rung_wandb.sink import WandbSinkOptions

    options = WandbSinkOptions(api_key=SECRET)
    assert SECRET not in repr(options) and SECRET not in str(options.model_dump())

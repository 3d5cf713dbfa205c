"""The Python API: the same things the CLI does, from a script or notebook."""

from __future__ import annotations

import json

import pytest

import rung
from rung.errors import ConfigError


def test_backend_by_name_and_ask(with_plugins):
    backend = rung.backend("echo", prefix="> ")
    completion = rung.ask(backend, "hello", max_tokens=5)
    assert completion.text == "> hello" and completion.finish_reason == "stop"


def test_backend_options_are_validated(with_plugins):
    with pytest.raises(ConfigError, match="backend 'echo': colour: Extra inputs are not permitted"):
        rung.backend("echo", colour="red")


def test_default_async_and_batch_methods(with_plugins):
    import asyncio

    backend = rung.backend("echo")
    requests = [rung.GenerationRequest(prompt=str(i)) for i in range(5)]
    assert [c.text for c in backend.generate_batch(requests, max_concurrency=2)] == [f"echo: {i}" for i in range(5)]

    async def go():
        done = await backend.agenerate(requests[0])
        deltas = [d async for d in backend.astream(requests[1])]
        return done, deltas

    done, deltas = asyncio.run(go())
    assert done.text == "echo: 0" and "".join(d.text for d in deltas) == "echo: 1"
    assert deltas[-1].finish_reason == "stop"


def test_run_a_config_built_in_code(with_plugins, tmp_path):
    result = rung.run({
        "backend": {"name": "echo"},
        "trainer": {"name": "count", "steps": 2},
        "output_dir": str(tmp_path),
        "logging": {"sinks": [{"name": "jsonl"}, {"name": "memory"}]},
    }, overrides=["trainer.steps=3"])
    assert result.steps == 3 and result.final_loss == pytest.approx(1 / 3)
    from rung_echo.impl import MemorySink

    assert [step for step, _ in MemorySink.records[-3:]] == [1, 2, 3]
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 3


def test_config_object_round_trips_through_the_api(with_plugins, tmp_path):
    config = rung.make_config({"backend": {"name": "echo"}, "trainer": {"name": "count", "steps": 1}, "output_dir": str(tmp_path)})
    assert rung.run(config).steps == 1
    assert json.loads(json.dumps({"ok": True}))


def test_run_builds_tokenizer_and_data_from_their_sections(with_plugins, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("ab\ncde\n")
    rung.run({
        "backend": {"name": "echo"},
        "tokenizer": {"name": "chars"},
        "data": {"name": "lines", "path": str(corpus)},
        "trainer": {"name": "count", "steps": 1},
        "output_dir": str(tmp_path / "out"),
        "logging": {"sinks": [{"name": "jsonl"}]},
    })
    first = json.loads((tmp_path / "out" / "metrics.jsonl").read_text().splitlines()[0])
    assert first == {"step": 0, "tokens": 5.0}


def test_trainer_without_data_section_gets_a_clear_error(with_plugins, tmp_path):
    from rung.runner import Run

    config = rung.make_config({"backend": {"name": "echo"}, "trainer": {"name": "count"}, "output_dir": str(tmp_path)})
    with pytest.raises(ConfigError, match="trainer 'count' needs a 'data' section"):
        Run(config).data()

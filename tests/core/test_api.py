"""The Python API: the same things the CLI does, from a script or notebook.

Exercised against the pip-installed test plugin rung-echo (tests/core/plugin_packages.py),
whose backend keeps the requests it was sent and the tokenizer it was given.
"""

from __future__ import annotations

import asyncio
import json
import textwrap

import pytest

import rung
from rung.config import config_to_yaml
from rung.errors import ConfigError


def test_every_lazy_export_resolves_to_the_named_object():
    """`rung.X` imports its module on first use; a renamed or moved object would only show
    up when a user touches it."""
    import importlib

    for name in rung.__all__:
        module = importlib.import_module(rung._EXPORTS[name])
        assert getattr(rung, name) is getattr(module, name), name
    with pytest.raises(AttributeError, match="module 'rung' has no attribute 'nothing_here'"):
        rung.nothing_here


def test_ask_sends_one_user_turn_with_the_system_and_sampling_given(with_plugins):
    backend = rung.backend("echo", prefix="> ")
    completion = rung.ask(backend, "hello", system="be brief", max_tokens=5, temperature=0.5, stop=["\n"])
    assert (completion.text, completion.finish_reason, completion.model) == ("> hello", "stop", "echo")
    [request] = backend.requests
    assert request.messages == (rung.Message("user", "hello"),) and request.system == "be brief"
    assert (request.max_tokens, request.temperature, request.stop, request.top_p) == (5, 0.5, ("\n",), None)
    with pytest.raises(TypeError, match="colour"):
        rung.ask(backend, "hello", colour="red")


def test_backend_options_are_validated(with_plugins):
    assert rung.backend("echo").options.prefix == "echo: "  # the options model's default
    with pytest.raises(ConfigError, match="backend 'echo': colour: Extra inputs are not permitted"):
        rung.backend("echo", colour="red")
    with pytest.raises(ConfigError, match=r"backend 'echo': prefix: Input should be a valid string"):
        rung.backend("echo", prefix=3)
    with pytest.raises(rung.RungError, match=r"unknown backend 'ecoh' \(did you mean 'echo'\?\)"):
        rung.backend("ecoh")


def test_tokenizer_by_name_and_handed_to_a_backend(with_plugins):
    tokenizer = rung.tokenizer("chars")
    assert tokenizer.encode("hi") == [104, 105] and tokenizer.decode([104, 105]) == "hi"
    assert rung.backend("echo", tokenizer=tokenizer).tokenizer is tokenizer
    assert rung.backend("echo").tokenizer is None


def test_default_async_and_batch_methods(with_plugins):
    backend = rung.backend("echo")
    requests = [rung.GenerationRequest(prompt=str(i)) for i in range(5)]
    assert [c.text for c in backend.generate_batch(requests, max_concurrency=2)] == [f"echo: {i}" for i in range(5)]
    assert sorted(r.prompt for r in backend.requests) == ["0", "1", "2", "3", "4"]

    async def go():
        done = await backend.agenerate(requests[0])
        deltas = [d async for d in backend.astream(requests[1])]
        return done, deltas

    done, deltas = asyncio.run(go())
    assert done.text == "echo: 0" and "".join(d.text for d in deltas) == "echo: 1"
    assert deltas[-1].finish_reason == "stop"


def test_run_a_config_built_in_code(with_plugins, tmp_path):
    from rung_echo.impl import MemorySink

    MemorySink.records.clear()
    result = rung.run({
        "backend": {"name": "echo"},
        "trainer": {"name": "count", "steps": 2},
        "output_dir": str(tmp_path),
        "logging": {"sinks": [{"name": "jsonl"}, {"name": "memory"}]},
    }, overrides=["trainer.steps=3"])
    assert result.steps == 3 and result.final_loss == pytest.approx(1 / 3)
    assert result.output_dir == str(tmp_path)
    assert MemorySink.records == [(1, {"loss": 1.0, "echo": "echo: x"}), (2, {"loss": 0.5, "echo": "echo: x"}),
                                  (3, {"loss": pytest.approx(1 / 3), "echo": "echo: x"})]
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_run_a_config_file_with_overrides(with_plugins, tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(textwrap.dedent(f"""\
        backend: {{name: echo, prefix: "re: "}}
        trainer: {{name: count, steps: 2}}
        output_dir: {tmp_path / "out"}
        logging: {{sinks: [{{name: jsonl}}]}}
        """))
    assert rung.run(path, overrides=["trainer.steps=4"]).steps == 4
    assert rung.run(str(path)).steps == 2  # a str path too; no override this time
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1] == {"step": 2, "loss": 0.5, "echo": "re: x"}
    with pytest.raises(ConfigError, match=r"command line override trainer\.stpes: unknown key 'stpes'"):
        rung.run(path, overrides=["trainer.stpes=4"])


def test_a_config_object_saved_as_yaml_loads_back_the_same(with_plugins, tmp_path):
    config = rung.make_config({"backend": {"name": "echo", "prefix": "> "}, "seed": 5,
                               "trainer": {"name": "count", "steps": 2, "learning_rate": 0.01},
                               "output_dir": str(tmp_path / "out")})
    path = tmp_path / "saved.yaml"
    path.write_text(config_to_yaml(config))
    again = rung.load_config(path)
    assert again.model_dump() == config.model_dump()
    assert (again.backend.prefix, again.trainer.learning_rate, again.seed) == ("> ", 0.01, 5)
    result = rung.run(again)
    assert result.steps == 2 and (tmp_path / "out" / "config.yaml").read_text() == config_to_yaml(config)


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


def test_bad_configs_are_refused_before_anything_runs(with_plugins, tmp_path):
    with pytest.raises(ConfigError, match=r"trainer\.steps: Input should be greater than or equal to 1"):
        rung.run({"backend": {"name": "echo"}, "trainer": {"name": "count", "steps": 0},
                  "output_dir": str(tmp_path / "out")})
    with pytest.raises(ConfigError, match="no such config file"):
        rung.run(tmp_path / "absent.yaml")
    assert not (tmp_path / "out").exists()


def test_trainer_without_data_section_gets_a_clear_error(with_plugins, tmp_path):
    from rung.runner import Run

    config = rung.make_config({"backend": {"name": "echo"}, "trainer": {"name": "count"}, "output_dir": str(tmp_path)})
    with pytest.raises(ConfigError, match="trainer 'count' needs a 'data' section"):
        Run(config).data()

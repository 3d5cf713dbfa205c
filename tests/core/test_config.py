"""Config loading: plugin options validate their sections; errors say file, line and path."""

from __future__ import annotations

import textwrap

import pytest

from rung.config import apply_override, config_to_yaml, json_schema, load_config, make_config
from rung.errors import ConfigError
from rung.plugins import get_plugins

GOOD = """\
backend:
  name: echo
  prefix: "> "
  api_key: sk-secret-value-123
trainer:
  name: count
  steps: 3
output_dir: {out}
seed: 7
"""


def write(tmp_path, text, name="run.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_sections_validate_to_the_plugins_options(with_plugins, tmp_path):
    config = load_config(write(tmp_path, GOOD.format(out=tmp_path / "out")))
    assert config.backend.name == "echo" and config.backend.prefix == "> "
    assert config.trainer.steps == 3 and config.trainer.learning_rate == 3e-4
    from rung_echo.impl import CountOptions, EchoOptions

    assert isinstance(config.backend, EchoOptions) and isinstance(config.trainer, CountOptions)
    assert [s.name for s in config.logging.sinks] == ["console", "jsonl"]


def test_unknown_key_names_file_line_path_and_suggests(with_plugins, tmp_path):
    path = write(tmp_path, GOOD.format(out=tmp_path).replace("  steps: 3", "  stpes: 3"))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert message.startswith(f"{path}:7: trainer.stpes: unknown key 'stpes' (did you mean 'steps'?); allowed: ")
    assert "batch_size" in message


def test_unknown_plugin_name_suggests_a_close_one(with_plugins, tmp_path):
    path = write(tmp_path, GOOD.format(out=tmp_path).replace("name: count", "name: cuont"))
    suggestion = r":6: trainer\.name: unknown trainer 'cuont' \(did you mean 'count'\?\); installed: "
    with pytest.raises(ConfigError, match=suggestion):
        load_config(path)


def test_wrong_type_says_what_was_given(with_plugins, tmp_path):
    path = write(tmp_path, GOOD.format(out=tmp_path).replace("steps: 3", "steps: many"))
    with pytest.raises(ConfigError, match=r":7: trainer\.steps: Input should be a valid integer.*\(got 'many'\)"):
        load_config(path)


def test_secret_values_never_appear_in_errors(with_plugins, tmp_path):
    text = GOOD.format(out=tmp_path).replace("api_key: sk-secret-value-123", "api_key: [sk-secret-value-123]")
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "api_key" in str(err.value) and "sk-secret-value-123" not in str(err.value)


def test_overrides_are_parsed_as_yaml_and_named_in_errors(with_plugins, tmp_path):
    path = write(tmp_path, GOOD.format(out=tmp_path))
    config = load_config(path, ["trainer.steps=11", "backend.prefix=hi", "seed=3"])
    assert (config.trainer.steps, config.backend.prefix, config.seed) == (11, "hi", 3)
    too_small = r"command line override trainer\.steps: Input should be greater than or equal to 1"
    with pytest.raises(ConfigError, match=too_small):
        load_config(path, ["trainer.steps=0"])
    with pytest.raises(ConfigError, match="expected KEY.PATH=VALUE"):
        load_config(path, ["trainer.steps"])


def test_apply_override_creates_sections_and_indexes_lists():
    data = {"logging": {"sinks": [{"name": "console"}]}}
    apply_override(data, "logging.sinks.0.name=jsonl")
    apply_override(data, "trainer.steps=5")
    assert data == {"logging": {"sinks": [{"name": "jsonl"}]}, "trainer": {"steps": 5}}


def test_missing_backend_and_bad_yaml_are_clear(with_plugins, tmp_path):
    with pytest.raises(ConfigError, match="backend: Field required"):
        make_config({"seed": 1})
    with pytest.raises(ConfigError, match=r"bad\.yaml:\d+: invalid YAML"):
        load_config(write(tmp_path, "backend:\n  name: [echo\n", "bad.yaml"))
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match=r"backend: missing 'name' \(which backend: "):
        make_config({"backend": {"prefix": "x"}})


def test_unknown_top_level_key_suggests(with_plugins):
    with pytest.raises(ConfigError, match=r"unknown key 'sed' \(did you mean 'seed'\?\)"):
        make_config({"backend": {"name": "echo"}, "sed": 1})


def test_trainer_must_have_an_objective_for_the_backend_framework(with_plugins):
    refused = r"trainer 'count' needs objective 'next_token_loss', which backend 'twin-only' \(framework: "
    with pytest.raises(ConfigError, match=refused):
        make_config({"backend": {"name": "twin-only"}, "trainer": {"name": "count"}, "output_dir": "x"})


def test_saved_config_leaves_secrets_out(with_plugins, tmp_path):
    config = load_config(write(tmp_path, GOOD.format(out=tmp_path)))
    text = config_to_yaml(config)
    assert "sk-secret-value-123" not in text and "api_key" not in text
    assert "sk-secret-value-123" not in repr(config) and "sk-secret-value-123" not in str(config)
    assert config.backend.api_key.get_secret_value() == "sk-secret-value-123"
    reloaded = load_config(write(tmp_path, text, "again.yaml"))
    assert reloaded.backend.api_key is None and reloaded.trainer.steps == 3


def test_schema_includes_every_installed_plugins_options(with_plugins):
    schema = json_schema(get_plugins().registry)
    text = str(schema)
    assert "prefix" in text and "grad_accum_steps" in text and "'jsonl'" in text
    assert schema["additionalProperties"] is False

"""Plugin discovery through entry points, filtering by environment, and failure isolation."""

from __future__ import annotations

import pytest

from rung.errors import PluginError
from rung.plugins import load_plugins


def names(plugins):
    return [p.name for p in plugins.loaded]


def test_core_registers_through_its_own_entry_point(with_plugins):
    plugins = load_plugins()
    core = next(p for p in plugins.loaded if p.name == "rung")
    assert core.module == "rung.builtin.plugin"
    assert {"console", "jsonl"} <= set(plugins.registry.names("metric_sink"))
    assert {"run", "plugins", "config"} <= set(plugins.registry.names("command"))


def test_third_party_plugin_is_found_with_its_version(with_plugins):
    plugins = load_plugins()
    echo = next(p for p in plugins.loaded if p.name == "rung-echo")
    assert echo.version == "1.2.3"
    kinds = {(d.kind, d.name) for d in echo.registered}
    assert kinds == {
        ("backend", "echo"), ("trainer", "count"), ("metric_sink", "memory"), ("command", "hello"),
        ("tokenizer", "chars"), ("data_source", "lines"), ("reward_function", "exact"),
        ("objective", "next_token_loss/toy"),
    }


def test_plugin_broken_at_import_is_skipped_with_one_line(with_plugins):
    plugins = load_plugins()
    assert "rung-broken" not in names(plugins)
    [line] = [w for w in plugins.warnings if "rung-broken" in w]
    assert line == "plugin rung-broken skipped: RuntimeError: this plugin is broken on purpose"
    assert "\n" not in line


def test_plugin_broken_at_registration_is_skipped_and_its_items_taken_back(with_plugins):
    plugins = load_plugins()
    assert "rung-badreg" not in names(plugins)
    assert "half" not in plugins.registry.names("backend")
    assert any("rung-badreg skipped: ValueError: registration failed on purpose" in w for w in plugins.warnings)


def test_duplicate_name_is_refused_naming_both_plugins(with_plugins):
    plugins = load_plugins()
    assert plugins.registry.get("backend", "echo").plugin == "rung-echo"
    refused = "backend 'echo' from rung-twin refused: rung-echo already registered a backend of that name"
    assert refused in plugins.warnings
    # The rest of the duplicate plugin still registers.
    assert plugins.registry.get("backend", "twin-only").plugin == "rung-twin"


def test_load_plugins_env_limits_what_loads(with_plugins, monkeypatch):
    monkeypatch.setenv("RUNG_LOAD_PLUGINS", "rung-echo")
    assert sorted(names(load_plugins())) == ["rung", "rung-echo"]
    monkeypatch.setenv("RUNG_LOAD_PLUGINS", "")
    assert names(load_plugins()) == ["rung"]


def test_disable_autoload_keeps_only_the_core(with_plugins, monkeypatch):
    monkeypatch.setenv("RUNG_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert names(load_plugins()) == ["rung"]


def test_descriptor_is_imported_only_on_use(with_plugins, monkeypatch):
    import sys

    monkeypatch.delitem(sys.modules, "rung_echo.impl", raising=False)
    plugins = load_plugins()
    assert "rung_echo.impl" not in sys.modules
    backend_cls = plugins.registry.get("backend", "echo").load()
    assert backend_cls.__name__ == "EchoBackend" and "rung_echo.impl" in sys.modules


def test_unknown_name_suggests_a_close_one(with_plugins):
    with pytest.raises(PluginError, match=r"unknown backend 'ecko' \(did you mean 'echo'\?\)"):
        load_plugins().registry.get("backend", "ecko")


def test_every_kind_of_registration_hook_reaches_the_registry(with_plugins):
    """rung_register_tokenizers, rung_register_data_sources, rung_register_reward_functions."""
    plugins = load_plugins()
    exact = plugins.registry.get("reward_function", "exact").load()
    assert exact(" 4 ", "4") == 1.0 and exact("5", "4") == 0.0
    tokenizer = plugins.registry.get("tokenizer", "chars").load()(None)
    assert tokenizer.decode(tokenizer.encode("abc")) == "abc"
    assert plugins.registry.get("data_source", "lines").summary == "one document per line of a file"

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rung.plugins import reset_plugins
from tests.core.plugin_packages import pip_install, write_package

RUNG = str(Path(sys.executable).with_name("rung"))


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory) -> Path:
    """A site directory with the test plugins pip-installed: good, broken and duplicate."""
    root = tmp_path_factory.mktemp("plugins")
    folders = [write_package(root / "src", dist) for dist in ("rung-echo", "rung-broken", "rung-badreg", "rung-twin")]
    site = root / "site"
    pip_install(folders, site)
    return site


@pytest.fixture
def with_plugins(plugin_site, monkeypatch):
    """Make the test plugins importable and discoverable in this process."""
    monkeypatch.syspath_prepend(str(plugin_site))
    import importlib

    importlib.invalidate_caches()
    reset_plugins()
    yield plugin_site
    reset_plugins()


@pytest.fixture
def rung_cli(plugin_site):
    """Run the real `rung` executable with the test plugins on its path."""

    def call(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None, input: str | None = None):
        full_env = {**os.environ, "PYTHONPATH": str(plugin_site), **(env or {})}
        return subprocess.run([RUNG, *args], capture_output=True, text=True, env=full_env, cwd=cwd, input=input)

    return call

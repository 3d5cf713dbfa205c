"""Meta-tests: every hook is documented and tested, so the plugin contract cannot rot."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from rung import hookspecs

ROOT = Path(__file__).resolve().parents[2]
HOOKS = [name for name, fn in vars(hookspecs).items() if name.startswith("rung_") and inspect.isfunction(fn)]


def test_there_are_hooks():
    assert len(HOOKS) >= 11


@pytest.mark.parametrize("name", HOOKS)
def test_hook_has_a_one_line_docstring(name):
    doc = inspect.getdoc(getattr(hookspecs, name)) or ""
    assert doc and "\n" not in doc.strip(), f"{name} needs a one-line docstring"


@pytest.mark.parametrize("name", HOOKS)
def test_hook_is_documented_for_plugin_authors(name):
    docs = (ROOT / "CONTRIBUTING.md").read_text()
    short = name.replace("rung_register", "")
    assert name in docs or f"`{short}`" in docs, f"{name} is not in CONTRIBUTING.md"


@pytest.mark.parametrize("name", HOOKS)
def test_hook_has_a_test(name):
    sources = [p.read_text() for p in (ROOT / "tests").rglob("*.py") if p.name != Path(__file__).name]
    assert any(name in source for source in sources), f"no test implements or calls {name}"

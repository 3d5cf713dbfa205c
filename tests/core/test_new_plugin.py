"""`rung new-plugin`: every kind's package installs as a user's would and its own tests pass at once.

The real `rung` executable writes one package of each kind; pip installs them all into one
site folder of the test's own (never the shared environment's site-packages). Each kind's
generated tests then run with pytest in a subprocess whose PYTHONPATH is that folder, from a
directory outside the package, so the plugin is found only through its installed dist-info
and entry point; `rung plugins` must list what each registered.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from rung.cli.main import main as rung_main
from rung.cli.new_plugin_cmd import KINDS, MAX_NAME_LENGTH, new_plugin_package, templates_root
from tests.core.plugin_packages import pip_install

ROOT = Path(__file__).resolve().parents[2]
RUNG = str(Path(sys.executable).with_name("rung"))


def plugin_name(kind: str) -> str:
    return f"fresh-{kind}"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """One package of every kind, written by `rung new-plugin` and pip-installed into root/site."""
    root = tmp_path_factory.mktemp("new_plugin")
    for kind in KINDS:
        made = subprocess.run([RUNG, "new-plugin", plugin_name(kind), "--kind", kind, "--output", str(root / "src")],
                              capture_output=True, text=True)
        assert made.returncode == 0, made.stderr
        assert f"wrote {root / 'src' / ('rung-' + plugin_name(kind))}/" in made.stdout
    pip_install(sorted((root / "src").iterdir()), root / "site")
    (root / "elsewhere").mkdir()
    return root


def isolated_env(site: Path) -> dict[str, str]:
    # No third-party pytest plugins: the generated tests need none, and they cost seconds each.
    return {**os.environ, "PYTHONPATH": str(site), "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
            "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


@pytest.mark.parametrize("kind", list(KINDS))
def test_generated_tests_pass_once_installed(installed, kind):
    package = installed / "src" / f"rung-{plugin_name(kind)}"
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(package)],
                            cwd=installed / "elsewhere", env=isolated_env(installed / "site"),
                            capture_output=True, text=True)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    # every generated test ran: none skipped (the trainer's run needs rung-torch, rung-tokenizers
    # and rung-pretrain, which this repository installs), none failed
    assert re.fullmatch(r"\d+ passed in [\d.]+s( \(.*\))?", summary), summary
    assert int(summary.split()[0]) >= 3


def test_rung_plugins_lists_each_new_plugin(installed):
    listed = subprocess.run([RUNG, "plugins", "--json"], env=isolated_env(installed / "site"),
                            capture_output=True, text=True, cwd=installed / "elsewhere")
    assert listed.returncode == 0, listed.stderr
    data = json.loads(listed.stdout)
    plugins = {p["name"]: p for p in data["plugins"]}
    for kind, spec in KINDS.items():
        name = plugin_name(kind)
        found = plugins[f"rung-{name}"]
        assert found["version"] == "0.1.0" and found["module"] == f"rung_{name.replace('-', '_')}.plugin"
        assert found["registered"] == {spec.registry_kind: [name]}
    assert not [w for w in data["warnings"] if "fresh-" in w]


def test_package_layout(installed):
    package = installed / "src" / "rung-fresh-backend"
    names = {str(p.relative_to(package)) for p in package.rglob("*") if p.is_file()}
    assert {"pyproject.toml", "README.md", "rung_fresh_backend/__init__.py", "rung_fresh_backend/plugin.py",
            "rung_fresh_backend/backend.py", "tests/test_backend.py", "tests/test_contract.py"} <= names
    pyproject = (package / "pyproject.toml").read_text()
    assert '[project.entry-points.rung]\nrung-fresh-backend = "rung_fresh_backend.plugin"' in pyproject
    assert "FreshBackendBackend" in (package / "rung_fresh_backend" / "backend.py").read_text()
    assert "BackendContract" in (package / "tests" / "test_contract.py").read_text()


def test_longest_names_give_lint_clean_code(tmp_path):
    """Every template, rendered with the longest name allowed, passes the house's lint (E, F, 120 columns)."""
    longest = ("abcdefghij-" * 3)[:MAX_NAME_LENGTH - 4] + "-xyz"
    for index, kind in enumerate(KINDS):
        new_plugin_package(longest[:-1] + str(index), kind, tmp_path)
    lint = subprocess.run([str(Path(sys.executable).with_name("ruff")), "check", "--no-cache", "--isolated",
                           "--select", "E,F", "--line-length", "120", str(tmp_path)], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """The `rung` entry point in this process: its exit code, stdout and stderr."""
    with pytest.raises(SystemExit) as exited:
        rung_main(list(args))
    out = capsys.readouterr()
    return exited.value.code, out.out, out.err


@pytest.mark.parametrize("name", ["Parrot", "my_echo", "9lives", "two--hyphens", "trailing-", "has space",
                                  "x" * (MAX_NAME_LENGTH + 1), "rung-parrot"])
def test_a_bad_name_is_one_line(capsys, tmp_path, name):
    code, _, err = cli(capsys, "new-plugin", name, "--kind", "sink", "--output", str(tmp_path))
    assert code != 0 and err.startswith(f"rung: error: plugin name '{name}'") and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_an_existing_folder_is_not_overwritten(capsys, tmp_path):
    existing = tmp_path / "rung-keep"
    existing.mkdir()
    (existing / "mine.txt").write_text("my work")
    code, _, err = cli(capsys, "new-plugin", "keep", "--kind", "data", "--output", str(tmp_path))
    assert code != 0 and "already exists; it is not overwritten" in err and err.count("\n") == 1
    assert [p.name for p in tmp_path.iterdir()] == ["rung-keep"]  # no half-written staging folder either
    assert [p.name for p in existing.iterdir()] == ["mine.txt"] and (existing / "mine.txt").read_text() == "my work"


@pytest.mark.parametrize("name, kind, says", [
    ("torch", "sink", "the distribution rung-torch"),  # installing it would replace rung-torch
    ("console", "sink", "rung already registers a metric sink 'console'"),
])
def test_a_name_an_installed_plugin_uses_is_refused(capsys, tmp_path, name, kind, says):
    code, _, err = cli(capsys, "new-plugin", name, "--kind", kind, "--output", str(tmp_path))
    assert code != 0 and says in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_kind_is_a_usage_error(capsys, tmp_path):
    code, _, err = cli(capsys, "new-plugin", "parrot", "--kind", "model", "--output", str(tmp_path))
    assert code == 2 and "'model' is not one of" in err


def test_the_templates_ship_in_the_core_wheel(tmp_path):
    """The package data setting (`rung = ["templates/**/*"]`) puts every template in a built wheel."""
    source = tmp_path / "rung-src"
    shutil.copytree(ROOT / "core", source / "core", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", "-w", str(tmp_path / "dist"), str(source)],
                   check=True, capture_output=True)
    wheel = next((tmp_path / "dist").glob("rung-*.whl"))
    shipped = {n for n in zipfile.ZipFile(wheel).namelist() if n.startswith("rung/templates/")}
    templates = templates_root()
    expected = {f"rung/templates/new_plugin/{p.relative_to(templates).as_posix()}"
                for p in templates.rglob("*") if p.is_file()}
    assert expected and shipped == expected

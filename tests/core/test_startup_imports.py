"""`rung --help` and `rung plugins` must not import heavy libraries (start-up goal: < 0.2 s).

A behaviour check, not a timing: running both commands with every plugin of this repository
installed may import only light modules. The figure itself is in benchmarks/startup.py.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.core.test_import_rules import PROJECT

HEAVY = ["torch", "jax", "transformers", "tokenizers", "peft", "trl", "numpy", "openai",
         "anthropic", "datatrove", "datasets", "safetensors", "pydantic", "rich.progress"]

# Both commands in one process, as the executable runs them; their output is kept aside.
PROBE = """
import contextlib, io, json, sys
from rung.cli.main import main
from rung.plugins import get_plugins
out = {}
for argv in (["--help"], ["plugins"]):
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        try:
            main(argv)
        except SystemExit as exc:
            assert not exc.code, (argv, exc.code)
    out[argv[0]] = buffer.getvalue()
plugins = get_plugins()
print(json.dumps({"modules": sorted(sys.modules), "plugins": [p.name for p in plugins.loaded],
                  "warnings": plugins.warnings, "output": out}))
"""


def test_help_and_plugins_import_nothing_heavy():
    run = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    data = json.loads(run.stdout)
    # The check means something only if every plugin here loaded and both commands printed.
    assert set(data["plugins"]) == {d.name for d in PROJECT.distributions}, data["warnings"]
    assert "Commands:" in data["output"]["--help"] and "run" in data["output"]["--help"]
    assert all(name in data["output"]["plugins"] for name in data["plugins"])
    heavy = [name for name in HEAVY if name in data["modules"]]
    assert heavy == [], f"rung --help / rung plugins imported {heavy} (plugins: {data['plugins']})"

"""`rung --help` and `rung plugins` must not import heavy libraries (start-up goal: < 0.2 s).

A behaviour check, not a timing: discovering every installed plugin and listing commands
may import only light modules. The figure itself is in benchmarks/startup.py.
"""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ["torch", "jax", "transformers", "tokenizers", "peft", "trl", "numpy", "openai",
         "anthropic", "datatrove", "datasets", "safetensors", "pydantic", "rich.progress"]

PROBE = """
import json, sys
from rung.plugins import get_plugins
plugins = get_plugins()
for d in plugins.registry.items["command"].values():
    d.summary
print(json.dumps({"modules": sorted(sys.modules), "plugins": [p.name for p in plugins.loaded]}))
"""


def test_plugin_discovery_imports_nothing_heavy():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True).stdout
    data = json.loads(out)
    heavy = [name for name in HEAVY if name in data["modules"]]
    assert heavy == [], f"plugin discovery imported {heavy} (plugins: {data['plugins']})"

"""Where rung keeps per-user files: ``$RUNG_CONFIG_DIR``, else ``$XDG_CONFIG_HOME/rung``,
else ``~/.config/rung``."""

from __future__ import annotations

import os
from pathlib import Path


def config_dir() -> Path:
    """The user's rung config directory (not created)."""
    explicit = os.environ.get("RUNG_CONFIG_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CONFIG_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".config"
    return base / "rung"


def ensure_config_dir() -> Path:
    """The config directory, created with mode 0700 if it is missing."""
    path = config_dir()
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path

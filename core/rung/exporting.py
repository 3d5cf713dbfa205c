"""Export formats: a trained model taken elsewhere, by formats that plugins register.

`rung export SOURCE [OUTPUT] --format NAME [key=value ...]` and `rung.exporting.export(...)`
look the format up in the registry (`rung_register_export_formats`), validate the options by
its options model and call the exporter:

    exporter(options, source: Path, output: Path | None) -> Path   # what it wrote

`source` is a model folder (rung's or a transformers one) or a LoRA adapter folder; `output`
None means the format's own default place beside the source. Formats: `safetensors` (rung-lora:
a plain model folder, an adapter merged into its base first), `gguf` (rung-gguf: one file for
llama.cpp and Ollama). A format that needs another one first (gguf of an adapter: merge it)
calls `export` itself, so no plugin imports another for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from rung.errors import ConfigError


class Exporter(Protocol):
    """One export format's implementation."""

    def __call__(self, options: Any, source: Path, output: Path | None) -> Path:
        """Write `source` in this format to `output` (or the format's default) and return the path written."""


def export(format: str, source: str | Path, output: str | Path | None = None,
           options: Mapping[str, Any] | None = None, registry: Any = None) -> Path:
    """Export `source` as `format`; a bad format or option is one ConfigError naming it."""
    from rung.runner import validate_section

    if registry is None:
        from rung.plugins import get_plugins

        registry = get_plugins().registry
    source = Path(source)
    if not source.exists():
        raise ConfigError(f"export: no model or adapter at '{source}'")
    section = validate_section(registry, "export_format", {"name": format, **dict(options or {})},
                               f"export --format {format}")
    exporter = registry.get("export_format", format).load()
    return Path(exporter(section, source, None if output is None else Path(output)))

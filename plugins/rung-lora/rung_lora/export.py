"""`rung export --format safetensors`: a plain model folder; a LoRA adapter is merged into its base first."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from rung.options import Options


class SafetensorsOptions(Options):
    """Options of the `safetensors` export format."""

    base: str | None = Field(None, description="an adapter's base model folder (default: the one it trained on)")
    backend: str | None = Field(None, description="backend that loads the base (default: the training run's)")


def export_safetensors(options: SafetensorsOptions, source: Path, output: Path | None) -> Path:
    """An adapter folder: merged into its base and saved; a model folder: saved again through its backend.

    OUTPUT defaults to a 'merged' folder beside an adapter. The result loads like any model
    (`backend.model: OUTPUT`, transformers' from_pretrained).
    """
    from rung.errors import ConfigError

    if not Path(source, "adapter_config.json").is_file():
        raise ConfigError(f"export --format safetensors: '{source}' is not a LoRA adapter folder "
                          "(no adapter_config.json); a model folder is already safetensors")
    target = output if output is not None else Path(source).parent / "merged"
    return export_adapter(source, target, base=options.base, backend_name=options.backend)


def export_adapter(adapter: str | Path, output: str | Path, base: str | None = None,
                   backend_name: str | None = None) -> Path:
    """Load the base through the backend the adapter names, merge the adapter in, save the result."""
    import json

    import rung
    from rung.errors import RungError

    from rung_lora.saving import copy_tokenizer_files, read_note, save_tokenizer

    adapter, output = Path(adapter), Path(output)
    note = read_note(adapter)
    if base is None:
        base = note.get("base") or json.loads((adapter / "adapter_config.json").read_text()).get(
            "base_model_name_or_path")
    if not base:
        raise RungError(f"{adapter}: the adapter does not say where its base model is; pass base=DIR")
    name = backend_name or note.get("backend") or "hf"
    options: dict[str, Any] = {}
    if name == note.get("backend"):  # keep the options it trained with (precision, device, ...)
        options = {k: v for k, v in (note.get("backend_options") or {}).items() if k != "name"}
    options["model"] = str(base)
    backend = rung.backend(name, **options)
    if not callable(getattr(backend, "adapters", None)):
        raise RungError(f"backend '{name}' cannot carry LoRA adapters; pass backend=torch, hf or jax")
    backend.adapters().load_adapter(adapter, merge=True)
    output.mkdir(parents=True, exist_ok=True)
    backend.save(output)
    save_tokenizer(None, output, note.get("chat_template"))  # the format the adapter learnt
    copy_tokenizer_files(adapter, output)
    return output

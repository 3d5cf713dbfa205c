"""`rung export`: merge a LoRA adapter into its base model and save a plain model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click


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
        raise RungError(f"{adapter}: the adapter does not say where its base model is; pass --base DIR")
    name = backend_name or note.get("backend") or "hf"
    options: dict[str, Any] = {}
    if name == note.get("backend"):  # keep the options it trained with (precision, device, ...)
        options = {k: v for k, v in (note.get("backend_options") or {}).items() if k != "name"}
    options["model"] = str(base)
    backend = rung.backend(name, **options)
    if not callable(getattr(backend, "adapters", None)):
        raise RungError(f"backend '{name}' cannot carry LoRA adapters; pass --backend torch, hf or jax")
    backend.adapters().load_adapter(adapter, merge=True)
    output.mkdir(parents=True, exist_ok=True)
    backend.save(output)
    save_tokenizer(None, output, note.get("chat_template"))  # the format the adapter learnt
    copy_tokenizer_files(adapter, output)
    return output


@click.command()
@click.argument("adapter", type=click.Path(file_okay=False))
@click.argument("output", type=click.Path(file_okay=False), required=False)
@click.option("--base", help="the base model directory (default: the one the adapter was trained on)")
@click.option("--backend", "backend_name", help="backend that loads the base (default: the training run's)")
def export(adapter: str, output: str | None, base: str | None, backend_name: str | None) -> None:
    """Merge the LoRA ADAPTER into its base model and save a plain model to OUTPUT.

    OUTPUT defaults to a 'merged' folder beside the adapter. The result loads like any model
    (`backend.model: OUTPUT`, transformers' from_pretrained).
    """
    target = Path(output) if output else Path(adapter).parent / "merged"
    saved = export_adapter(adapter, target, base=base, backend_name=backend_name)
    click.echo(f"merged {adapter} into its base; saved {saved}")

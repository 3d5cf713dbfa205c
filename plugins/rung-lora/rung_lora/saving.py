"""What sft and lora write beside a model or an adapter: the tokenizer, the chat template the
model learnt, and rung's note of where an adapter's base is (`rung.interfaces.ADAPTER_NOTE`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from rung.errors import RungError
from rung.interfaces import ADAPTER_NOTE

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "chat_template.jinja", "vocab.json", "merges.txt", "tokenizer.model")
CHAT_TEMPLATE_FILE = "chat_template.jinja"


def save_tokenizer(tokenizer: Any, directory: Path, chat_template: str | None) -> None:
    """The tokenizer (when it can save itself) and the chat template the model was trained with.

    A model trained on conversations is served in their format: the template goes into
    `chat_template.jinja` (read by transformers and rung's tokenizers) and, when the tokenizer
    wrote a `tokenizer_config.json`, into its `chat_template` field too.
    """
    directory.mkdir(parents=True, exist_ok=True)
    if tokenizer is not None and hasattr(tokenizer, "save") and not (directory / "tokenizer.json").exists():
        try:
            tokenizer.save(directory)
        except Exception:  # noqa: BLE001 - a tokenizer that cannot save is not fatal here
            pass
    if not chat_template:
        return
    (directory / CHAT_TEMPLATE_FILE).write_text(chat_template, encoding="utf-8")
    config_file = directory / "tokenizer_config.json"
    if config_file.is_file():
        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
        except ValueError:
            return
        config["chat_template"] = chat_template
        config_file.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def read_note(adapter_dir: str | Path) -> dict[str, Any]:
    """rung's note beside a PEFT adapter ({} for an adapter peft wrote alone)."""
    path = Path(adapter_dir)
    if not (path / "adapter_config.json").is_file():
        raise RungError(f"{adapter_dir}: no adapter_config.json here; is it a PEFT adapter directory?")
    note = path / ADAPTER_NOTE
    return json.loads(note.read_text(encoding="utf-8")) if note.is_file() else {}


def copy_tokenizer_files(source: Path, target: Path) -> None:
    for name in TOKENIZER_FILES:
        if (source / name).is_file() and not (target / name).exists():
            shutil.copy2(source / name, target / name)

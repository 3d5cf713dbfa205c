"""rung-lora: supervised fine-tuning (`sft`) and LoRA adapters (`lora`) for torch models.

Light at import; the heavy pieces live in `rung_lora.trainer`, `rung_lora.adapters`, ...
`load_adapter(backend, adapter_dir)` puts a saved adapter on a backend's model for generation.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def load_adapter(backend: Any, adapter_dir: str, merge: bool = True) -> Any:
    """Wrap `backend.model` with the PEFT adapter in `adapter_dir` (merged into it by default)."""
    from rung_lora.adapters import load_adapter as _load

    return _load(backend, adapter_dir, merge=merge)

"""rung-lora: supervised fine-tuning (`sft`) and LoRA adapters (`lora`) on any compute backend.

Light at import; the trainers live in `rung_lora.trainer`. The adapters themselves are the
backend's (`backend.adapters()`: peft in rung-torch for torch and hf, Flax NNX in rung-jax).
`load_adapter(backend, adapter_dir)` puts a saved adapter on a backend's model for generation.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def load_adapter(backend: Any, adapter_dir: str, merge: bool = True) -> Any:
    """Put the PEFT adapter in `adapter_dir` on `backend.model` (merged into it by default)."""
    from rung.errors import RungError

    if not callable(getattr(backend, "adapters", None)):
        raise RungError(f"{type(backend).__name__} cannot carry LoRA adapters (it has no adapters())")
    backend.adapters().load_adapter(adapter_dir, merge=merge)
    return backend.model

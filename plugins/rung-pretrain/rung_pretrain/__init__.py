"""rung-pretrain: build a language model from scratch.

corpus (sources) -> cleaning -> tokenizer training -> token shards -> pretraining.

    from rung_pretrain import prepare
    data = prepare("examples/pretrain_stdlib.yaml")       # or a Run, a config, a dict
    batches = data.train_batches(batch_size=8, seq_len=256, seed=0)

Names are imported on first use so that plugin discovery stays light.
"""

from typing import Any

_EXPORTS = {"prepare": "pipeline", "PreparedData": "prepared", "open_prepared": "prepared"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"rung_pretrain.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'rung_pretrain' has no attribute {name!r}")

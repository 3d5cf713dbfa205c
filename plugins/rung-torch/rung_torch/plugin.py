"""Registration of rung-torch's pieces: light, imports nothing heavy."""

from __future__ import annotations

from rung.hookspecs import hookimpl


@hookimpl
def rung_register_backends(register):
    register("torch", impl="rung_torch.backend:TorchBackend", options="rung_torch.options:TorchOptions",
             summary="rung's Llama-style model in PyTorch (CUDA or CPU): generate and train",
             framework="torch")

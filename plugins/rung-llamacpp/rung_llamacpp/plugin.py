"""Registration of rung-llamacpp's backend: light, imports nothing heavy (not even llama_cpp)."""

from __future__ import annotations

from rung.hookspecs import hookimpl


@hookimpl
def rung_register_backends(register):
    register("llamacpp", impl="rung_llamacpp.backend:LlamaCppBackend", options="rung_llamacpp.options:LlamaCppOptions",
             summary="a GGUF model (or a rung/transformers model folder, exported once) through llama.cpp on the CPU")

"""Registration of rung-gguf's export format: light, imports nothing heavy."""

from __future__ import annotations

from rung.hookspecs import hookimpl


@hookimpl
def rung_register_export_formats(register):
    register("gguf", impl="rung_gguf.export:export_gguf", options="rung_gguf.options:GGUFOptions",
             summary="one GGUF file for llama.cpp and Ollama (f16, bf16, q8_0, f32), with a Modelfile beside it")

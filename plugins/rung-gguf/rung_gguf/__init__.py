"""rung-gguf: rung's and transformers' Llama models as one GGUF file (llama.cpp, Ollama).

`rung export MODEL [OUT.gguf] --format gguf outtype=f16|bf16|q8_0|f32`, or
`rung.exporting.export("gguf", MODEL)`. A LoRA adapter folder is merged into its base first.
"""

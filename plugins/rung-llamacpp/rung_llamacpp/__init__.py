"""rung-llamacpp: the `llamacpp` backend, GGUF models through llama.cpp (llama-cpp-python)."""

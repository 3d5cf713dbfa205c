"""rung-torch: rung's own Llama-style model in PyTorch, its training engine and generation."""

__version__ = "0.1.0"

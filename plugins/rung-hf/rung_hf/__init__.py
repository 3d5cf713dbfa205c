"""rung-hf: any Hugging Face transformers causal LM as a rung backend, any HF tokenizer.

Light on import: the backend (`rung_hf.backend.HFBackend`) and tokenizer
(`rung_hf.tokenizer.HFTokenizer`) import torch and transformers when they are used.
"""

__version__ = "0.1.0"

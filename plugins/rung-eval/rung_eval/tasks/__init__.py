"""rung-eval's task kinds: `perplexity`, `multiple_choice` and `generation` (one module each)."""

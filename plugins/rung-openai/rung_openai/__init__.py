"""rung-openai: OpenAI chat completions, and any OpenAI-compatible server, as a rung backend."""

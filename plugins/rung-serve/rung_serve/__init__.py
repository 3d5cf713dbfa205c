"""rung serve: an OpenAI-compatible HTTP server for any rung backend."""

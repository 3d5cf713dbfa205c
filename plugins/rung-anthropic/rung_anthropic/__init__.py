"""rung-anthropic: the Anthropic Messages API as a rung backend."""

"""Registration only: names where the backend lives; imports nothing heavy."""

from __future__ import annotations

from rung.hookspecs import hookimpl


@hookimpl
def rung_register_backends(register):
    register(
        "openai",
        impl="rung_openai.backend:OpenAIBackend",
        options="rung_openai.options:OpenAIOptions",
        summary="OpenAI chat completions, or any OpenAI-compatible server (base_url)",
        framework=None,
    )

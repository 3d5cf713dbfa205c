"""Registration only: names where the backend lives; imports nothing heavy."""

from __future__ import annotations

from rung.hookspecs import hookimpl


@hookimpl
def rung_register_backends(register):
    register(
        "anthropic",
        impl="rung_anthropic.backend:AnthropicBackend",
        options="rung_anthropic.options:AnthropicOptions",
        summary="Anthropic Messages API (Claude models)",
        framework=None,
    )

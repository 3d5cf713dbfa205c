"""Registration only: the `serve` command (imported on use)."""

from __future__ import annotations

from rung.hookspecs import hookimpl


@hookimpl
def rung_register_commands(register):
    register("serve", impl="rung_serve.serve_cmd:serve",
             summary="Serve a backend over an OpenAI-compatible HTTP API (127.0.0.1 by default).")

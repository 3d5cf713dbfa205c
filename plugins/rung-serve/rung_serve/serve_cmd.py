"""`rung serve`: one backend behind an OpenAI-compatible HTTP API."""

from __future__ import annotations

from typing import Any

import click


@click.command()
@click.option("-b", "--backend", required=True, help="backend name, e.g. torch, hf, openai")
@click.option("-m", "--model", help="the backend's model: a preset, a checkpoint folder, a hosted model name")
@click.option("-o", "--option", "options", multiple=True, metavar="KEY=VALUE",
              help="backend option, e.g. -o device=cpu (repeatable)")
@click.option("--tokenizer", metavar="NAME", help="a rung tokenizer by name (e.g. byte), for a preset model")
@click.option("--name", help="the model name clients send (default: the model's)")
@click.option("--host", default="127.0.0.1", show_default=True, help="address to bind; 0.0.0.0 exposes the server")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="port to bind")
@click.option("--api-key", envvar="RUNG_SERVE_API_KEY", metavar="KEY",
              help="require 'Authorization: Bearer KEY' (or set RUNG_SERVE_API_KEY)")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]), help="uvicorn's log level")
def serve(backend: str, model: str | None, options: tuple[str, ...], tokenizer: str | None, name: str | None,
          host: str, port: int, api_key: str | None, log_level: str) -> None:
    """Serve one backend over OpenAI's HTTP API: /v1/chat/completions, /v1/completions,
    /v1/models, /tokenize, /detokenize, /health.

    \b
    rung serve -b torch -m runs/stdlib/model -o device=cpu
    rung serve -b hf -m Qwen/Qwen2.5-0.5B-Instruct --port 8001 --api-key secret
    curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
      -d '{"model": "model", "messages": [{"role": "user", "content": "Hi"}]}'
    """
    import uvicorn

    from rung_serve.app import create_app

    instance = build_backend(backend, model, options, tokenizer)
    served = name or _default_name(instance, model, backend)
    app = create_app({served: instance}, api_key=api_key or None)
    click.echo(f"rung serve: model '{served}' ({backend}) at http://{host}:{port}/v1"
               + (" (API key required)" if api_key else ""), err=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level)


def build_backend(backend: str, model: str | None, options: tuple[str, ...], tokenizer: str | None) -> Any:
    """The backend `-b -m -o` name, validated against its plugin's options (one-line errors)."""
    import rung
    from rung.config import apply_override
    from rung.errors import RungError

    data: dict[str, Any] = {}
    for item in options:
        if "=" not in item:
            raise RungError(f"-o {item}: expected KEY=VALUE, e.g. -o device=cpu")
        apply_override(data, item)
    if model:
        data["model"] = model
    resources = {"tokenizer": rung.tokenizer(tokenizer)} if tokenizer else {}
    return rung.backend(backend, **resources, **data)


def _default_name(instance: Any, model: str | None, backend: str) -> str:
    from pathlib import Path

    named = getattr(instance, "name", None)
    if isinstance(named, str) and named:
        return named
    if model:
        return Path(model).name if Path(model).is_dir() else model
    return backend

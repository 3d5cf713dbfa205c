"""`rung serve`: backends behind an OpenAI-compatible HTTP API, from -b/-m/-o or a CONFIG file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click


@click.command()
@click.argument("config", required=False, metavar="[CONFIG]")
@click.option("-b", "--backend", help="backend name, e.g. torch, hf, openai (instead of a CONFIG file)")
@click.option("-m", "--model", help="the backend's model: a preset, a checkpoint folder, a hosted model name")
@click.option("-o", "--option", "options", multiple=True, metavar="KEY=VALUE",
              help="backend option, e.g. -o device=cpu or -o adapter=DIR (repeatable)")
@click.option("--tokenizer", metavar="NAME", help="a rung tokenizer by name (e.g. byte), for a preset model")
@click.option("--name", help="the model name clients send (default: the model's)")
@click.option("--host", help="address to bind [default: 127.0.0.1]; 0.0.0.0 exposes the server")
@click.option("--port", type=click.IntRange(0, 65535), help="port to bind [default: 8000]")
@click.option("--api-key", envvar="RUNG_SERVE_API_KEY", metavar="KEY",
              help="require 'Authorization: Bearer KEY' (or set RUNG_SERVE_API_KEY)")
@click.option("--api-key-store", metavar="NAME", help="require the key stored as NAME in rung's key store")
@click.option("--max-queue", type=click.IntRange(min=0), metavar="N",
              help="requests that may wait for a busy compute model; one more gets 429 [default: 64]")
@click.option("--request-timeout", type=click.FloatRange(min=0, min_open=True), metavar="S",
              help="seconds a request may run, waiting included, before it is cancelled [default: 600]")
@click.option("--max-tokens", type=click.IntRange(min=1), metavar="N",
              help="the most new tokens a request may ask for (and its default) [default: the model's limit]")
@click.option("--max-slots", type=click.IntRange(min=1), metavar="N",
              help="requests a torch, hf or jax model decodes at once (continuous batching) [default: 32]")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]),
              help="uvicorn's log level [default: info]")
def serve(config: str | None, backend: str | None, model: str | None, options: tuple[str, ...],
          tokenizer: str | None, name: str | None, host: str | None, port: int | None, api_key: str | None,
          api_key_store: str | None, max_queue: int | None, request_timeout: float | None, max_tokens: int | None,
          max_slots: int | None, log_level: str | None) -> None:
    """Serve models over OpenAI's HTTP API: /v1/chat/completions, /v1/completions, /v1/models,
    /tokenize, /detokenize, /health, /metrics, and a chat page at /.

    One backend from -b/-m/-o, or every model of a CONFIG file (YAML: `models:` with a name and
    a backend section each, `server:`, `limits:`; see the rung-serve README). Options given here
    override the file's. SIGTERM drains: in-flight requests finish, then it exits 0.

    \b
    rung serve -b torch -m runs/stdlib/model -o device=cpu
    rung serve -b hf -m Qwen/Qwen2.5-0.5B-Instruct --port 8001 --api-key secret
    rung serve serve.yaml --max-queue 16 --request-timeout 120
    curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
      -d '{"model": "model", "messages": [{"role": "user", "content": "Hi"}]}'
    """
    from rung.errors import RungError
    from rung_serve.config import ServeConfigBase, build_models, load_serve_config, resolve_api_key, stored_key

    if config and (backend or model or options or tokenizer or name):
        raise RungError("rung serve: give a CONFIG file or -b/-m/-o/--tokenizer/--name, not both")
    if config:
        settings = load_serve_config(config)
        # the key before the (slow) model loading: a missing one is said at once
        key = api_key or (stored_key(api_key_store, "--api-key-store") if api_key_store else resolve_api_key(settings))
        served = build_models(settings)
        kinds = {entry.name: entry.backend.name for entry in settings.models}  # type: ignore[attr-defined]
    elif backend:
        settings = ServeConfigBase()
        key = api_key or (stored_key(api_key_store, "--api-key-store") if api_key_store else None)
        instance = build_backend(backend, model, options, tokenizer)
        served_name = name or _default_name(instance, model, backend)
        served, kinds = {served_name: instance}, {served_name: backend}
    else:
        raise RungError("rung serve: give a CONFIG file or -b BACKEND (see rung serve --help)")

    given = {"max_queue": max_queue, "request_timeout": request_timeout, "max_tokens": max_tokens,
             "max_slots": max_slots}
    limits = settings.limits.model_copy(update={k: v for k, v in given.items() if v is not None})
    _run(served, kinds, key, limits, host or settings.server.host,
         settings.server.port if port is None else port, log_level or settings.server.log_level)


def _run(served: dict[str, Any], kinds: dict[str, str], key: str | None, limits: Any, host: str, port: int,
         log_level: str) -> None:
    import uvicorn

    from rung_serve.app import create_app
    from rung_serve.draining import DrainingServer

    app = create_app(served, api_key=key or None, limits=limits)
    listed = ", ".join(f"'{name}' ({kinds[name]})" for name in served)
    click.echo(f"rung serve: model{'s' if len(served) > 1 else ''} {listed} at http://{host}:{port}/v1"
               + (" (API key required)" if key else ""), err=True)
    server = DrainingServer(uvicorn.Config(app, host=host, port=port, log_level=log_level), app.state.gate)
    server.run()


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
    named = getattr(instance, "name", None)
    if isinstance(named, str) and named:
        return named
    if model:
        return Path(model).name if Path(model).is_dir() else model
    return backend

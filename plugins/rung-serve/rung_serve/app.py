"""The FastAPI app: OpenAI-compatible endpoints over rung backends.

`create_app({"name": backend}, api_key=...)` serves each backend through the public Backend
API only (`agenerate`, `astream`, `tokenizer` where present), so any backend can be served:
compute backends decode in worker threads (torch's continuously batched, hf's and jax's one
at a time: `scheduling.py`), hosted ones are proxied.

Errors are OpenAI's JSON, `{"error": {"message", "type", "param", "code"}}`: 400 for a body
that is not JSON or has bad fields, an unknown model, or a `RungError` from the backend (its
one line); 401 for a missing or wrong bearer token; 404 for an unknown route; 413 for a body
over `max_body_bytes`; 429 (with Retry-After) when a compute model's queue is full, 503 while
draining, 504 past the request time limit (`limits.py`). `GET /metrics` is Prometheus text
(`metrics.py`).

`GET /` is the chat page (`static/chat.html`, one self-contained file); it needs no key itself,
the API calls it makes do (the page asks for the key when /v1/models answers 401).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Mapping
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from rung.errors import RungError
from rung.records import Delta, GenerationRequest
from rung_serve.errors import ServeError, error_json
from rung_serve.limits import DrainGuard, Gate, Limits, capacity_of
from rung_serve.metrics import CONTENT_TYPE, Metrics, RecordRequests
from rung_serve.openai_format import (
    BadRequest,
    Chunks,
    chat_completion,
    chat_request,
    check_backend,
    completion_request,
    stream_flags,
    text_completion,
)
from rung_serve.scheduling import _Model
from rung_serve.schemas import document_bodies

log = logging.getLogger("rung.serve")
T = TypeVar("T")

CLIENT_CLOSED = 499  # what /metrics counts for a request whose client left before its answer (nginx's code)
DISCARD_BYTES = 8 << 20  # how much of a body over the limit is read (and dropped) so its client sees the 413
# The chat page loads nothing but itself and calls only its own origin.
PAGE_POLICY = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; "
               "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
# What a failed hosted call (rung.hosted.APIError.kind) is to our client: not its fault.
UPSTREAM_STATUS = {"auth": 502, "permission": 502, "server": 502, "timeout": 504, "connection": 502,
                   "malformed": 502, "cut_off": 502, "rate_limit": 429}


def _backend_error(exc: RungError) -> ServeError:
    status = UPSTREAM_STATUS.get(getattr(exc, "kind", ""), 400)
    type_ = "invalid_request_error" if status == 400 else "upstream_error"
    message = " ".join(str(exc).split()) or type(exc).__name__
    return ServeError(status, message, type_)


def create_app(models: Mapping[str, Any], api_key: str | None = None,
               max_body_bytes: int | None = None, limits: Limits | None = None) -> FastAPI:
    """An app serving `models` (served name -> rung Backend); with `api_key`, every endpoint but
    /health needs `Authorization: Bearer <api_key>`. `limits`: queue, time, max_tokens and body
    limits (`max_body_bytes`, when given, overrides theirs); `app.state.gate` drains it."""
    if not models:
        raise ValueError("create_app needs at least one model")
    created = int(time.time())
    key = api_key.encode() if api_key else None
    app = FastAPI(title="rung serve", docs_url=None, redoc_url=None)
    # Operations (limits.py, metrics.py): the gate counts and refuses, the metrics record.
    limits = limits or Limits()
    if max_body_bytes is not None:
        limits = limits.model_copy(update={"max_body_bytes": max_body_bytes})
    max_body_bytes = limits.max_body_bytes
    served = {name: _Model(name, backend, limits.max_slots) for name, backend in models.items()}
    gate = Gate(limits)
    for model in served.values():
        gate.register(model.name, capacity_of(model))
    metrics = Metrics(gate)
    app.add_middleware(DrainGuard, gate=gate)
    app.add_middleware(RecordRequests, metrics=metrics)  # outermost: it sees every answer, 503s included
    app.state.gate, app.state.metrics = gate, metrics
    app.state.served = served  # name -> scheduling._Model (its scheduler's slot counts)
    document_bodies(app)

    @app.exception_handler(ServeError)
    async def _serve_error(request: Request, exc: ServeError) -> JSONResponse:
        return error_json(exc.status, exc.message, exc.type, exc.param, exc.code, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = "no such route: " + request.url.path if exc.status_code == 404 else str(exc.detail)
        return error_json(exc.status_code, message, code="not_found" if exc.status_code == 404 else None)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_json(400, "invalid request")

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("rung serve: internal error on %s", request.url.path)
        return error_json(500, "internal server error", "server_error")

    def authorize(request: Request) -> None:
        if key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key):
            raise ServeError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                             code="invalid_api_key")

    async def read_json(request: Request) -> dict[str, Any]:
        authorize(request)
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_body_bytes:
            await _discard(request, int(length))
            raise _too_large(max_body_bytes)
        chunks, size = [], 0
        async for piece in request.stream():
            size += len(piece)
            if size > max_body_bytes:
                await _discard(request, size)
                raise _too_large(max_body_bytes)
            chunks.append(piece)
        try:
            body = json.loads(b"".join(chunks), parse_constant=_not_finite, parse_float=_finite)
        except _NotFinite as exc:
            raise ServeError(400, f"the request body has {exc}: numbers must be finite") from None
        except (ValueError, UnicodeDecodeError):
            raise ServeError(400, "the request body is not valid JSON") from None
        except RecursionError:
            raise ServeError(400, "the request body is nested too deeply") from None
        if not isinstance(body, dict):
            raise ServeError(400, "the request body must be a JSON object")
        try:  # JSON's \ud800-style escapes can smuggle lone surrogates, which no tokenizer takes
            json.dumps(body, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise ServeError(400, "the request body has a lone surrogate (\\ud800-\\udfff) in a string: "
                             "not valid Unicode") from None
        return body

    def pick(body: dict[str, Any]) -> _Model:
        name = body.get("model")
        if name is None and len(served) == 1:
            return next(iter(served.values()))
        if not isinstance(name, str) or name not in served:
            raise ServeError(400, f"model {name!r} is not served here; served: {', '.join(served)}",
                             param="model", code="model_not_found")
        return served[name]

    async def answer(request: Request, chat: bool) -> Any:
        started, deadline = time.monotonic(), gate.deadline()
        body = await read_json(request)
        model = pick(body)
        try:
            rung_request = chat_request(body) if chat else completion_request(body)
            check_backend(rung_request, model.backend)
            stream, include_usage = stream_flags(body)
        except BadRequest as exc:
            raise ServeError(400, exc.message, param=exc.param, code=exc.code) from None
        except (ValueError, TypeError) as exc:
            raise ServeError(400, str(exc)) from None
        rung_request = gate.cap_tokens(rung_request)
        if not stream:
            async with gate.turn(model.name, model.turn(), deadline):
                work = gate.within(deadline, model.agenerate(rung_request))
                try:
                    # A model whose request can be cancelled (continuous batching, a hosted API)
                    # stops work for a client that has gone, as a stream does; one that decodes
                    # in a thread of its own behind a lock runs to the end (the lock guards it).
                    done = await (work if model.lock is not None else _unless_disconnected(request, work))
                except RungError as exc:
                    raise _backend_error(exc) from None
            if done is None:  # the client disconnected: nobody to answer
                return Response(status_code=CLIENT_CLOSED)
            metrics.count_usage(model.name, done.usage)
            return (chat_completion if chat else text_completion)(done, model.name, rung_request)
        return await open_stream(model, rung_request, Chunks(model.name, chat, include_usage, rung_request), started,
                                 deadline)

    async def open_stream(model: _Model, rung_request: GenerationRequest, chunks: Chunks, started: float,
                          deadline: float | None) -> StreamingResponse:
        # The first delta is awaited here, so a request the backend refuses (a prompt over the
        # context, bad sampling) is a 400 before any event is sent.
        turn = gate.turn(model.name, model.turn(), deadline)
        await turn.__aenter__()
        deltas = metrics.observed(gate.bounded(model.astream(rung_request), deadline), model.name, started)
        try:
            first = await deltas.__anext__()
        except StopAsyncIteration:
            first = None
        except BaseException as exc:
            await _close(deltas, turn)
            if isinstance(exc, RungError):
                raise _backend_error(exc) from None
            raise

        async def events() -> AsyncIterator[str]:
            try:
                delta: Delta | None = first
                while delta is not None:
                    for chunk in chunks.of(delta):
                        yield f"data: {json.dumps(chunk)}\n\n"
                    if delta.finish_reason is not None:
                        break
                    try:
                        delta = await deltas.__anext__()
                    except StopAsyncIteration:
                        delta = None
                yield "data: [DONE]\n\n"
            except (RungError, ServeError) as exc:  # mid-stream: the status is sent, so an error event
                error = exc if isinstance(exc, ServeError) else _backend_error(exc)
                yield f"data: {json.dumps(error.payload())}\n\n"
                yield "data: [DONE]\n\n"
            finally:
                await _close(deltas, turn)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        return await answer(request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        return await answer(request, chat=False)

    def model_card(name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": created, "owned_by": "rung"}

    @app.get("/v1/models")
    async def list_models(request: Request) -> Any:
        authorize(request)
        return {"object": "list", "data": [model_card(name) for name in served]}

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str, request: Request) -> Any:
        authorize(request)
        if name not in served:
            raise ServeError(404, f"model {name!r} is not served here", param="model", code="model_not_found")
        return model_card(name)

    page = chat_page()

    @app.get("/", include_in_schema=False)
    async def chat() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": PAGE_POLICY, "Cache-Control": "no-cache"})

    @app.get("/health")
    async def health() -> Any:
        return {"status": "ok"}

    @app.get("/metrics")
    async def prometheus_metrics(request: Request) -> Response:
        authorize(request)
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    def tokenizer_of(model: _Model) -> Any:
        tokenizer = getattr(model.backend, "tokenizer", None)
        if tokenizer is None:
            raise ServeError(400, f"model {model.name!r} has no tokenizer to (de)tokenize with", param="model")
        return tokenizer

    @app.post("/tokenize")
    async def tokenize(request: Request) -> Any:
        from rung.decoding import encode_text, prompt_text

        body = await read_json(request)
        model = pick(body)
        tokenizer = tokenizer_of(model)
        try:
            if "messages" in body:
                text, chat = prompt_text(chat_request({"messages": body["messages"]}), tokenizer)
                ids = encode_text(tokenizer, text, chat)
            elif isinstance(body.get("prompt"), str):
                ids = [int(i) for i in tokenizer.encode(body["prompt"])]
            else:
                raise BadRequest("give 'prompt' (a string) or 'messages'", "prompt")
        except BadRequest as exc:
            raise ServeError(400, exc.message, param=exc.param) from None
        except RungError as exc:
            raise _backend_error(exc) from None
        out: dict[str, Any] = {"tokens": ids, "count": len(ids)}
        context = getattr(getattr(model.backend, "config", None), "max_seq_len", None)
        if isinstance(context, int):
            out["max_model_len"] = context
        return out

    @app.post("/detokenize")
    async def detokenize(request: Request) -> Any:
        body = await read_json(request)
        model = pick(body)
        tokenizer = tokenizer_of(model)
        tokens = body.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
            raise ServeError(400, "'tokens' must be a list of integers", param="tokens")
        vocab = getattr(tokenizer, "vocab_size", None)
        if isinstance(vocab, int) and any(not 0 <= t < vocab for t in tokens):
            raise ServeError(400, f"'tokens' must be ids in [0, {vocab})", param="tokens")
        return {"prompt": tokenizer.decode(tokens)}

    return app


def chat_page() -> str:
    """The chat page's HTML, shipped as package data."""
    from importlib.resources import files

    return (files("rung_serve") / "static" / "chat.html").read_text(encoding="utf-8")


class _NotFinite(ValueError):
    """NaN or an infinity in a request body: Python's json reads them, JSON has none."""


def _not_finite(constant: str) -> float:
    raise _NotFinite(constant)


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NotFinite(f"{text[:40]}, beyond a float's range")
    return value


async def _discard(request: Request, seen: int) -> None:
    """Read and drop the rest of a body over the limit, up to DISCARD_BYTES in all: a client
    still sending when the server answers and closes gets a broken pipe instead of the 413."""
    if seen > DISCARD_BYTES:
        return
    with contextlib.suppress(Exception):
        async for piece in request.stream():
            seen += len(piece)
            if seen > DISCARD_BYTES:
                return


def _too_large(limit: int) -> ServeError:
    return ServeError(413, f"the request body is over the limit of {limit} bytes", code="request_too_large")


async def _unless_disconnected(request: Request, awaitable: Awaitable[T]) -> T | None:
    """`await awaitable`, or None as soon as the client disconnects (the awaitable cancelled then:
    under continuous batching that frees the request's slot at the next step)."""
    work = asyncio.ensure_future(awaitable)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait((work, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not work.done():
            work.cancel()
    return work.result() if work.done() else None


async def _disconnected(request: Request) -> None:
    """Return when the client has closed its connection. The body is read already, so the
    server's next ASGI message for this request is `http.disconnect` (none comes before it)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _close(deltas: Any, turn: Any) -> None:
    try:
        closer = getattr(deltas, "aclose", None)
        if closer is not None:
            await closer()
    finally:
        await turn.__aexit__(None, None, None)

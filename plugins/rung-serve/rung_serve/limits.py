"""What keeps rung serve answering under load: the queue limit, the request time limit, the
max_tokens cap, and draining.

`Limits` are the settings (a config's `limits:` section, or `--max-queue` and friends). A
`Gate` holds their live state for one app:

- every HTTP request is counted in flight (`DrainGuard`, an ASGI middleware) so that SIGTERM
  can wait for the last one; while draining, new requests get 503;
- a request for a model enters through `gate.turn(...)`, around the model's own turn: a compute
  model runs `capacity` requests at once (1 for a model that decodes one request at a time,
  its batch slots under continuous batching) and lets `max_queue` more wait; one more is 429;
- a request's deadline is `request_timeout` seconds after it came; `within` and `bounded`
  cancel what runs past it (the model's turn is left, so the model is free for the next).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable
from dataclasses import replace
from typing import Any, TypeVar

from pydantic import Field

from rung.options import Options
from rung.records import GenerationRequest
from rung_serve.errors import ServeError

T = TypeVar("T")

MAX_BODY_BYTES = 1 << 20  # 1 MiB
RETRY_AFTER_S = "1"


class Limits(Options):
    """How much rung serve takes on: the `limits:` section of a serve config."""

    max_queue: int = Field(64, ge=0, description="requests that may wait for a busy compute model; one more gets 429")
    request_timeout: float | None = Field(600.0, gt=0, description="seconds a request may run (waiting included) "
                                          "before it is cancelled; null for no limit")
    max_tokens: int | None = Field(None, ge=1, description="the most new tokens a request may ask for, and what it "
                                   "gets when it asks for none; null: the model's own limit")
    max_body_bytes: int = Field(MAX_BODY_BYTES, ge=1, description="the largest request body accepted (413 beyond)")
    max_slots: int = Field(32, ge=1, description="requests a compute model with continuous batching (torch, hf, jax) "
                           "decodes at once, each in its own KV-cache slot")


def capacity_of(model: Any) -> int | None:
    """How many requests a served model runs at once; None (no queue limit) for a hosted API.

    A scheduler that decodes several requests at once says so with a `slots` attribute."""
    slots = getattr(model, "slots", None)
    if isinstance(slots, int) and slots > 0:
        return slots
    return 1 if hasattr(model.backend, "framework") else None


class Gate:
    """The live state of one app's limits: in-flight counts, the queue, draining."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self.draining = False
        self.in_flight = 0  # HTTP requests, streams until their last byte
        self.admitted: dict[str, int] = {}  # per model: running or waiting for it
        self.capacity: dict[str, int | None] = {}

    # -- draining

    def drain(self) -> None:
        """Refuse new requests from now on; those in flight go on. Safe to call from a signal handler."""
        self.draining = True

    # -- the queue

    def register(self, name: str, capacity: int | None) -> None:
        self.admitted.setdefault(name, 0)
        self.capacity[name] = capacity

    def waiting(self, name: str) -> int:
        capacity = self.capacity.get(name)
        return 0 if capacity is None else max(0, self.admitted.get(name, 0) - capacity)

    @contextlib.asynccontextmanager
    async def turn(self, name: str, model_turn: Any, deadline: float | None) -> AsyncIterator[None]:
        """Enter `model_turn` (the model's own async context manager) for model `name`: 429 when
        its queue is full, 504 when the deadline passes while waiting."""
        capacity = self.capacity.get(name)
        if capacity is not None and self.admitted.get(name, 0) >= capacity + self.limits.max_queue:
            raise ServeError(429, f"model {name!r} is busy: {self.limits.max_queue} requests are already waiting; "
                             "retry later", "rate_limit_error", code="queue_full",
                             headers={"Retry-After": RETRY_AFTER_S})
        self.admitted[name] = self.admitted.get(name, 0) + 1
        try:
            async with _until(deadline, self.limits.request_timeout):
                await model_turn.__aenter__()
            try:
                yield
            except BaseException as exc:
                if not await model_turn.__aexit__(type(exc), exc, exc.__traceback__):
                    raise
            else:
                await model_turn.__aexit__(None, None, None)
        finally:
            self.admitted[name] -= 1

    # -- time and size

    def deadline(self) -> float | None:
        """The loop time by which a request that starts now must be done, or None."""
        timeout = self.limits.request_timeout
        return None if timeout is None else asyncio.get_running_loop().time() + timeout

    async def within(self, deadline: float | None, awaitable: Awaitable[T]) -> T:
        """`await awaitable`, cancelled with a 504 at `deadline`."""
        async with _until(deadline, self.limits.request_timeout):
            return await awaitable

    async def bounded(self, deltas: AsyncIterator[T], deadline: float | None) -> AsyncIterator[T]:
        """The items of `deltas`, each awaited before `deadline` (504 past it); closes `deltas`."""
        try:
            while True:
                try:
                    async with _until(deadline, self.limits.request_timeout):
                        item = await deltas.__anext__()
                except StopAsyncIteration:
                    return
                yield item
        finally:
            closer = getattr(deltas, "aclose", None)
            if closer is not None:
                await closer()

    def cap_tokens(self, request: GenerationRequest) -> GenerationRequest:
        """The request within the server's max_tokens cap: more is 400, none asked is the cap."""
        cap = self.limits.max_tokens
        if cap is None:
            return request
        if request.max_tokens is None:
            return replace(request, max_tokens=cap)
        if request.max_tokens > cap:
            raise ServeError(400, f"max_tokens {request.max_tokens} is over this server's limit of {cap}",
                             param="max_tokens", code="max_tokens_over_limit")
        return request


@contextlib.asynccontextmanager
async def _until(deadline: float | None, timeout: float | None) -> AsyncIterator[None]:
    if deadline is None:
        yield
        return
    try:
        async with asyncio.timeout_at(deadline):
            yield
    except TimeoutError:
        raise ServeError(504, f"the request ran past this server's time limit of {timeout:g} s and was cancelled",
                         "timeout_error", code="request_timeout") from None


class DrainGuard:
    """ASGI middleware: counts HTTP requests in flight; while draining answers new ones 503
    (/health says "draining", so a load balancer takes the server out)."""

    def __init__(self, app: Any, gate: Gate) -> None:
        self.app, self.gate = app, gate

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.gate.draining and scope.get("path") != "/metrics":
            await _refuse_draining(scope, send)
            return
        self.gate.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.gate.in_flight -= 1


async def _refuse_draining(scope: dict[str, Any], send: Any) -> None:
    if scope.get("path") == "/health":
        payload: dict[str, Any] = {"status": "draining"}
    else:
        payload = ServeError(503, "the server is shutting down and takes no new requests", "server_error",
                             code="draining").payload()
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": 503,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"retry-after", RETRY_AFTER_S.encode()), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})

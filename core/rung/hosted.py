"""The hosted base: what hosted-API backends (rung-openai, rung-anthropic) share.

- `HostedOptions`: the options every hosted backend has (model, key and where else to find
  it, base_url, timeout, retries, batch concurrency); a provider subclasses it.
- `HostedBackend`: SDK clients built lazily (one sync client, one async client per event
  loop), the key found by `rung.keys.resolve_key` (option, environment, key store), the one
  stream/astream loop, `generate_batch` over the async client with bounded concurrency, a
  key-free repr, and SDK failures turned into one-line errors with the key scrubbed.
- `APIError`: the one-line `RungError` every SDK failure becomes, with a `kind` for code.

Pure Python: a provider plugin brings its SDK (``_sdk()`` returns the module, imported by the
plugin); nothing here imports openai or anthropic. Retries are the SDKs' own (``max_retries``,
``timeout`` options); nothing here retries.
"""

from __future__ import annotations

import asyncio
import os
import re
import weakref
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Iterator

from pydantic import Field

from rung.errors import RungError
from rung.interfaces import BaseBackend
from rung.keys import resolve_key
from rung.options import Options, SecretStr
from rung.records import Completion, Delta, GenerationRequest


class APIError(RungError):
    """A hosted API call failed; the message is one line and never contains the key.

    `kind` is one of: ``auth``, ``permission``, ``model``, ``not_found``, ``context``,
    ``refused``, ``bad_request``, ``rate_limit``, ``server``, ``timeout``, ``connection``,
    ``malformed``, ``cut_off``, ``unsupported``. `status` is the HTTP status, if any.
    """

    def __init__(self, message: str, kind: str, status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status


class UnsupportedError(APIError, NotImplementedError):
    """The API cannot do what was asked (e.g. count tokens); also a NotImplementedError."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "unsupported")


class HostedOptions(Options):
    """The options every hosted backend reads; a provider subclasses it, giving its defaults
    (model, api_key_env, key_name) and adding its own fields."""

    model: str = Field(description="model name")
    api_key: SecretStr | None = Field(None, description="API key; else the environment variable api_key_env, else the "
                                                        "key store entry key_name")
    api_key_env: str | None = Field(None, description="environment variable read when api_key is not set")
    key_name: str | None = Field(None, description="key store entry read when neither api_key nor the environment has "
                                                   "a key")
    base_url: str | None = Field(None, description="server URL; default the API's")
    timeout: float = Field(60.0, gt=0, description="seconds to wait for a response (and between streamed events) "
                                                   "before a retry")
    max_retries: int = Field(2, ge=0, description="retries on 408/409/429/5xx, timeouts and connection errors, with "
                                                  "backoff (the SDK's own)")
    max_concurrency: int = Field(8, ge=1, description="requests in flight in generate_batch")


def one_line(text: Any, limit: int = 240) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def first(*values: Any) -> Any:
    """The first value that is not None."""
    return next((v for v in values if v is not None), None)


_CONTEXT = re.compile(r"context length|context window|context_length|prompt is too long|too many tokens"
                      r"|maximum context|input is too long|too large", re.I)
_REFUSED = re.compile(r"content.?policy|content.?filter|safety|flagged|refus|invalid_prompt", re.I)
_MODEL = re.compile(r"\bmodel\b", re.I)


class HostedBackend(BaseBackend):
    """Base of the hosted-API backends: clients, keys, errors, batches, the stream loop.

    Subclasses set `provider`, `default_base_url`, `base_url_env`, `base_url_hint` and
    implement `_sdk()` (the SDK module), `_sdk_client(async_)`, `sdk_params(request,
    stream)`, `stream_state(model)`, `open_stream(client, params)` and `generate`/`agenerate`;
    every request goes through `params`, which refuses what no hosted API can do.
    """

    provider = "hosted"
    default_base_url = ""
    base_url_env = ""  # the SDK's own environment variable for the base URL
    base_url_hint = ""

    def __init__(self, options: Any, tokenizer: Any = None) -> None:
        self.options = options
        self.model: str = options.model
        self._key = resolve_key(options.api_key, options.api_key_env, options.key_name)
        if self._key.value is None and not self._key_optional():
            where = f"${options.api_key_env}, " if options.api_key_env else ""
            raise APIError(
                f"{self.provider}: no API key: set {where}the backend option api_key, "
                f"or run `rung keys set {options.key_name or self.provider}`",
                "auth",
            )
        self._client: Any = None
        self._aclients: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()

    def _key_optional(self) -> bool:
        """A local server (a base_url of our own) may need no key."""
        return self.base_url != self.default_base_url

    @property
    def base_url(self) -> str:
        """Where requests go: the base_url option, else the SDK's environment variable, else the API's."""
        env = os.environ.get(self.base_url_env, "").strip() if self.base_url_env else ""
        return self.options.base_url or env or self.default_base_url

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r}, base_url={self.base_url!r})"

    # -- clients
    def _secret(self) -> str | None:
        return self._key.value.get_secret_value() if self._key.value is not None else None

    def _sdk(self) -> Any:
        raise NotImplementedError

    def client(self) -> Any:
        """The SDK's sync client (built on first use)."""
        if self._client is None:
            self._client = self._sdk_client(async_=False)
        return self._client

    def aclient(self) -> Any:
        """The SDK's async client for the running event loop (one per loop)."""
        loop = asyncio.get_running_loop()
        client = self._aclients.get(loop)
        if client is None:
            client = self._aclients[loop] = self._sdk_client(async_=True)
        return client

    def _sdk_client(self, async_: bool) -> Any:
        raise NotImplementedError

    def close(self) -> None:
        """Close the sync client's connections (async clients close with their loop)."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> HostedBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- requests
    def params(self, request: GenerationRequest, stream: bool = False) -> dict[str, Any]:
        """The SDK call's keyword arguments for `request` (`sdk_params`), once it is checked."""
        if request.raw:
            # A chat API answers messages; sending the text as a user turn would be the very
            # chat reply `raw` asks not to get. Say so instead of pretending.
            raise UnsupportedError(
                f"{self.provider}: raw continuation (--raw) needs a local backend; "
                f"a hosted chat API only answers messages"
            )
        if request.token_healing:
            raise UnsupportedError(f"{self.provider}: token healing needs the model's tokenizer: a local backend")
        return self.sdk_params(request, stream)

    def sdk_params(self, request: GenerationRequest, stream: bool = False) -> dict[str, Any]:
        """The keyword arguments of the SDK's create call for `request`."""
        raise NotImplementedError

    # -- streaming. A subclass says how its SDK opens a stream and gives a state object that
    # reads its events: feed(event) -> Delta | None, a reading() context, last() -> final Delta.

    def stream_state(self, model: str) -> Any:
        """A fresh reader of one stream's events."""
        raise NotImplementedError

    def open_stream(self, client: Any, params: dict[str, Any]) -> Any:
        """Start a streamed request with `client` (sync or async SDK client)."""
        raise NotImplementedError

    def stream(self, request: GenerationRequest) -> Iterator[Delta]:
        params = self.params(request, stream=True)
        state = self.stream_state(params["model"])
        with self.errors(params["model"]):
            events = self.open_stream(self.client(), params)
        try:
            with state.reading():
                for event in events:
                    delta = state.feed(event)
                    if delta is not None:
                        yield delta
        finally:
            events.close()
        yield state.last()

    async def astream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        params = self.params(request, stream=True)
        state = self.stream_state(params["model"])
        with self.errors(params["model"]):
            events = await self.open_stream(self.aclient(), params)
        try:
            with state.reading():
                async for event in events:
                    delta = state.feed(event)
                    if delta is not None:
                        yield delta
        finally:
            await events.close()
        yield state.last()

    # -- batches
    def generate_batch(
        self, requests: Sequence[GenerationRequest], max_concurrency: int | None = None
    ) -> list[Completion]:
        """Completions for `requests`, in order, at most `max_concurrency` in flight.

        Runs on the SDK's async client in a private event loop; called from inside a running
        loop (a notebook), it uses worker threads instead. Use `agenerate_batch` from async code.
        """
        limit = max(1, max_concurrency or self.options.max_concurrency)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self._private_batch(list(requests), limit))
        with ThreadPoolExecutor(max_workers=limit) as pool:
            return list(pool.map(self.generate, requests))

    async def agenerate_batch(
        self, requests: Sequence[GenerationRequest], max_concurrency: int | None = None
    ) -> list[Completion]:
        """`generate_batch` for asyncio callers."""
        limit = max(1, max_concurrency or self.options.max_concurrency)
        return await _gather_bounded(self.agenerate, requests, limit)

    async def _private_batch(self, requests: list[GenerationRequest], limit: int) -> list[Completion]:
        client = self._sdk_client(async_=True)
        self._aclients[asyncio.get_running_loop()] = client
        try:
            return await _gather_bounded(self.agenerate, requests, limit)
        finally:
            await client.close()

    # -- errors
    @contextmanager
    def errors(self, model: str) -> Iterator[None]:
        """Turn SDK exceptions raised inside into one-line `APIError`s."""
        try:
            yield
        except RungError:
            raise
        except Exception as exc:  # SDK, transport, JSON and validation errors alike
            raise self.api_error(exc, model) from None

    def _scrub(self, text: str) -> str:
        secret = self._secret()
        if secret:
            text = text.replace(secret, "***")
            if len(secret) > 12:  # APIs echo parts of a wrong key: hide any 8-char piece of it
                for i in range(0, len(secret) - 7):
                    piece = secret[i : i + 8]
                    if piece in text:
                        text = text.replace(piece, "***")
        return text

    def api_error(self, exc: BaseException, model: str) -> APIError:
        """The one-line error a user sees for `exc`."""
        sdk = self._sdk()
        p, url = self.provider, self.base_url
        status = getattr(exc, "status_code", None)
        body = getattr(exc, "body", None)
        err = body.get("error", body) if isinstance(body, dict) else {}
        err = err if isinstance(err, dict) else {}
        server_message = one_line(self._scrub(str(err.get("message") or getattr(exc, "message", "") or exc)))
        code = str(err.get("code") or err.get("type") or "")
        retries = self.options.max_retries
        after = f" after {retries} {'retry' if retries == 1 else 'retries'}" if retries else ""

        def make(message: str, kind: str) -> APIError:
            return APIError(self._scrub(message), kind, status)

        if isinstance(exc, APIError):
            return exc
        if isinstance(exc, sdk.APITimeoutError):
            return make(f"{p}: no answer from {url} within {self.options.timeout:g} s{after}; raise the backend "
                        "option timeout", "timeout")
        if isinstance(exc, sdk.APIConnectionError):
            cause = exc.__cause__ or exc.__context__
            detail = one_line(self._scrub(str(cause))) if cause else "connection error"
            return make(f"{p}: cannot reach {url}{after}: {detail}", "connection")
        if status == 401 or isinstance(exc, sdk.AuthenticationError):
            if self._key.value is None:
                o = self.options
                places = ("the api_key option", f"${o.api_key_env}" if o.api_key_env else "",
                          f"the key store ('{o.key_name}')" if o.key_name else "")
                tried = ", ".join(x for x in places if x)
                return make(f"{p}: {url} wants an API key (401) and none was found (tried {tried}); run `rung keys "
                            f"set {self.options.key_name or p}`", "auth")
            return make(f"{p}: the API key was refused (401) by {url}; the key came from {self._key.source}: check "
                        f"it, or run `rung keys set {self.options.key_name or p}`", "auth")
        if status == 403:
            if _REFUSED.search(code + " " + server_message):
                return make(f"{p}: the request was refused (403): {server_message}", "refused")
            return make(f"{p}: permission denied (403) for model '{model}' (key from {self._key.source}): "
                        f"{server_message}", "permission")
        if status == 404:
            if code == "model_not_found" or _MODEL.search(server_message):
                return make(f"{p}: unknown model '{model}' at {url}: {server_message}", "model")
            return make(f"{p}: not found (404) at {url}: {server_message}; {self.base_url_hint}", "not_found")
        if status in (400, 413, 422):
            if code == "context_length_exceeded" or _CONTEXT.search(server_message):
                return make(f"{p}: the prompt is too long for model '{model}': {server_message}", "context")
            if _REFUSED.search(code) or _REFUSED.search(server_message):
                return make(f"{p}: the request was refused ({status}): {server_message}", "refused")
            return make(f"{p}: bad request ({status}) for model '{model}': {server_message}", "bad_request")
        if status == 429:
            return make(f"{p}: rate limited (429) by {url}{after}: {server_message}; wait, or raise the backend "
                        "option max_retries", "rate_limit")
        if status is not None and status >= 500:
            return make(f"{p}: server error ({status}) from {url}{after}: {server_message}", "server")
        if status is not None:
            return make(f"{p}: HTTP {status} from {url}: {server_message}", "bad_request")
        if isinstance(exc, ValueError) and type(exc).__name__ in ("JSONDecodeError", "ValidationError"):
            return make(f"{p}: the server at {url} sent a malformed response ({type(exc).__name__}: "
                        f"{one_line(exc, 120)})", "malformed")
        return make(f"{p}: request to {url} failed: {type(exc).__name__}: {one_line(self._scrub(str(exc)))}",
                    "connection")

    def cut_off(self, model: str, chars: int, why: str) -> APIError:
        return APIError(
            self._scrub(f"{self.provider}: the stream from {self.base_url} (model '{model}') was cut off after "
                        f"{chars} characters ({why}); the text is incomplete"),
            "cut_off",
        )


def stream_failure(exc: BaseException) -> str:
    """What broke a stream, in a few words: the transport's own error where there is one."""
    root = exc.__cause__ or exc.__context__ or exc
    text = one_line(root, 160) or type(root).__name__
    if isinstance(exc, TimeoutError) or "timeout" in type(root).__name__.lower() or "timed out" in text.lower():
        return f"no data within the timeout: {text}"
    return text


async def _gather_bounded(func: Any, items: Sequence[Any], limit: int) -> list[Any]:
    """`[await func(x) for x in items]`, at most `limit` at a time; the first error cancels the rest."""
    semaphore = asyncio.Semaphore(limit)

    async def one(item: Any) -> Any:
        async with semaphore:
            return await func(item)

    tasks = [asyncio.ensure_future(one(item)) for item in items]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise

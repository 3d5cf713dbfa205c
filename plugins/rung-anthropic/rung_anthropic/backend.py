"""The `anthropic` backend: the Messages API through the official SDK, sync and async.

Streams read the raw events (``message_start`` for input tokens, ``content_block_delta`` for
text, ``message_delta`` for the stop reason and output tokens, ``message_stop`` to end); a
stream without its ``message_stop`` raises `APIError(kind="cut_off")`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import anthropic
from pydantic import BaseModel

from rung.interfaces import Capabilities
from rung.records import Completion, Delta, GenerationRequest, Usage
from rung_anthropic.options import AnthropicOptions
from rung_anthropic.tools import tool_calls_of, tool_params, wire_messages
from rung.hosted import APIError, HostedBackend, first, one_line, stream_failure

M = TypeVar("M", bound=BaseModel)

FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
}
# From this API version on, the Messages API rejects temperature, top_p and top_k.
NO_SAMPLING_FROM = "2026-10-21"


def _sdk_api_version() -> str:
    from anthropic._constants import ANTHROPIC_API_VERSION

    return ANTHROPIC_API_VERSION


class AnthropicBackend(HostedBackend):
    """Claude models through the Anthropic Messages API."""

    provider = "anthropic"
    default_base_url = "https://api.anthropic.com"
    base_url_env = "ANTHROPIC_BASE_URL"
    base_url_hint = "Anthropic's base_url has no /v1"
    capabilities = Capabilities(chat=True, streaming=True, structured_output=True, tools=True)

    options: AnthropicOptions

    def __init__(self, options: AnthropicOptions, tokenizer: Any = None) -> None:
        super().__init__(options, tokenizer)
        self.api_version = options.api_version or _sdk_api_version()

    def _sdk(self) -> Any:
        return anthropic

    def _key_optional(self) -> bool:
        return False  # the SDK needs some credential even for a local server

    def _sdk_client(self, async_: bool) -> Any:
        o = self.options
        kwargs: dict[str, Any] = {"api_key": self._secret(), "timeout": o.timeout, "max_retries": o.max_retries}
        if self.base_url != self.default_base_url:
            kwargs["base_url"] = self.base_url
        if o.api_version:
            kwargs["default_headers"] = {"anthropic-version": o.api_version}
        return (anthropic.AsyncAnthropic if async_ else anthropic.Anthropic)(**kwargs)

    def sdk_params(self, request: GenerationRequest, stream: bool = False) -> dict[str, Any]:
        """The keyword arguments of ``messages.create`` for `request`."""
        o = self.options
        model = request.model or o.model
        system, messages = wire_messages(request.chat())
        params: dict[str, Any] = {
            "model": model,
            "max_tokens": first(request.max_tokens, o.max_tokens),
            "messages": messages,
        }
        params.update(tool_params(request))
        if system:
            params["system"] = "\n\n".join(system)
        stop = list(request.stop or o.stop)
        if stop:
            params["stop_sequences"] = stop
        extra = dict(o.extra_body)
        if request.seed is not None:
            raise APIError("anthropic: the Messages API has no seed; leave it unset", "unsupported")
        for name in ("min_p", "repetition_penalty"):
            if getattr(request, name) is not None:
                raise APIError(f"anthropic: the Messages API has no {name}; leave it unset", "unsupported")
        for name in ("temperature", "top_p", "top_k"):
            value = first(getattr(request, name), getattr(o, name))
            if value is None:
                continue
            if self.api_version >= NO_SAMPLING_FROM:
                raise APIError(
                    f"anthropic: API version {self.api_version} accepts no {name}; leave it unset, "
                    f"or set the backend option api_version=2023-06-01 for a model that still takes it",
                    "unsupported",
                )
            extra[name] = value
        if extra:
            params["extra_body"] = extra
        if stream:
            params["stream"] = True
        return params

    def _completion(self, message: Any, model: str) -> Completion:
        if message.stop_reason == "refusal":
            raise APIError(f"anthropic: model '{model}' refused the request (stop_reason 'refusal')", "refused")
        text = "".join(block.text for block in message.content if getattr(block, "type", None) == "text")
        calls = tool_calls_of(message.content)
        finish = FINISH.get(message.stop_reason or "", message.stop_reason or "stop")
        return Completion(
            text=text,
            finish_reason="tool_calls" if calls else finish,
            usage=_usage(message.usage),
            model=message.model or model,
            tool_calls=calls,
        )

    # -- generation
    def generate(self, request: GenerationRequest) -> Completion:
        params = self.params(request)
        with self.errors(params["model"]):
            return self._completion(self.client().messages.create(**params), params["model"])

    async def agenerate(self, request: GenerationRequest) -> Completion:
        params = self.params(request)
        with self.errors(params["model"]):
            return self._completion(await self.aclient().messages.create(**params), params["model"])

    # -- streaming: the loop is HostedBackend's; these say how this SDK opens a stream
    def stream_state(self, model: str) -> "_StreamState":
        return _StreamState(self, model)

    def open_stream(self, client: Any, params: dict[str, Any]) -> Any:
        return client.messages.create(**params)

    # -- structured output
    def generate_structured(self, request: GenerationRequest, schema: type[M]) -> M:
        """An instance of the pydantic model `schema`, through Anthropic structured outputs.

        The schema goes out as ``output_config.format`` (JSON schema); the reply is parsed and
        validated into `schema`. A refusal or a reply cut at max tokens raises `APIError`.
        """
        params = self.params(request)
        with self.errors(params["model"]):
            return self._parsed(self.client().messages.parse(output_format=schema, **params), params["model"], schema)

    async def agenerate_structured(self, request: GenerationRequest, schema: type[M]) -> M:
        """`generate_structured` for asyncio callers."""
        params = self.params(request)
        with self.errors(params["model"]):
            message = await self.aclient().messages.parse(output_format=schema, **params)
            return self._parsed(message, params["model"], schema)

    def _parsed(self, message: Any, model: str, schema: type[M]) -> M:
        if message.stop_reason == "refusal":
            raise APIError(f"anthropic: model '{model}' refused the request (stop_reason 'refusal')", "refused")
        if message.stop_reason == "max_tokens":
            raise APIError(f"anthropic: the structured reply of model '{model}' was cut at max tokens; raise "
                           "max_tokens", "cut_off")
        for block in message.content:
            parsed = getattr(block, "parsed_output", None)
            if parsed is not None:
                return parsed
        raise APIError(f"anthropic: model '{model}' returned no {schema.__name__}", "malformed")

    def api_error(self, exc: BaseException, model: str) -> APIError:
        if type(exc).__name__ == "ValidationError" and not hasattr(exc, "status_code"):
            return APIError(f"anthropic: the reply of model '{model}' does not fit the requested schema: "
                            f"{one_line(exc, 160)}", "malformed")
        return super().api_error(exc, model)

    def count_tokens(self, text: str) -> int:
        """Input tokens of `text` as one user message, from the API's count_tokens endpoint."""
        model = self.options.model
        with self.errors(model):
            result = self.client().messages.count_tokens(model=model, messages=[{"role": "user", "content": text}])
            return int(result.input_tokens)


def _usage(usage: Any) -> Usage:
    if usage is None:
        return Usage()
    prompt = (
        (usage.input_tokens or 0)
        + (getattr(usage, "cache_creation_input_tokens", 0) or 0)
        + (getattr(usage, "cache_read_input_tokens", 0) or 0)
    )
    return Usage(prompt, usage.output_tokens or 0)


class _StreamState:
    """Follows the stream's events; checks it reached ``message_stop``."""

    def __init__(self, backend: AnthropicBackend, model: str) -> None:
        self.backend, self.model = backend, model
        self.chars = 0
        self.events = 0
        self.prompt_tokens = 0
        self.output_tokens = 0
        self.stop_reason: str | None = None
        self.stopped = False
        self.served_model: str | None = None

    @contextmanager
    def reading(self) -> Iterator[None]:
        try:
            yield
        except APIError:
            raise
        except Exception as exc:
            status = getattr(exc, "status_code", None)
            if status is not None and status < 400:  # an `error` event in a 200 stream (e.g. overloaded)
                body = getattr(exc, "body", None)
                err = body.get("error", {}) if isinstance(body, dict) else {}
                what = (
                    f"{err.get('type', 'error')}: {err.get('message', '')}" if isinstance(err, dict) else one_line(exc)
                )
                why = f"the server sent an error event, {one_line(what, 160)}"
                raise self.backend.cut_off(self.model, self.chars, why) from None
            error = self.backend.api_error(exc, self.model)
            if error.status is None and (self.chars or error.kind in ("connection", "malformed", "timeout")):
                raise self.backend.cut_off(self.model, self.chars, stream_failure(exc)) from None
            raise error from None  # e.g. an `error` event (overloaded) mid-stream

    def feed(self, event: Any) -> Delta | None:
        self.events += 1
        kind = event.type
        if kind == "content_block_delta":
            text = getattr(event.delta, "text", None)
            if text:
                self.chars += len(text)
                return Delta(text=text, model=self.served_model)
        elif kind == "message_start":
            self.served_model = event.message.model
            self.prompt_tokens = _usage(event.message.usage).prompt_tokens
            self.output_tokens = event.message.usage.output_tokens or 0
        elif kind == "message_delta":
            self.stop_reason = event.delta.stop_reason or self.stop_reason
            usage = event.usage
            if usage is not None:
                self.output_tokens = usage.output_tokens or self.output_tokens
                if getattr(usage, "input_tokens", None) is not None:  # later totals win
                    self.prompt_tokens = _usage(usage).prompt_tokens
        elif kind == "message_stop":
            self.stopped = True
        return None

    def last(self) -> Delta:
        if self.events == 0:
            raise APIError(f"anthropic: the server at {self.backend.base_url} answered a stream request with no "
                           "events (malformed response)", "malformed")
        if self.stop_reason == "refusal":
            raise APIError(f"anthropic: model '{self.model}' refused the request (stop_reason 'refusal')", "refused")
        if not self.stopped or self.stop_reason is None:
            raise self.backend.cut_off(self.model, self.chars, "it ended before message_stop")
        return Delta(
            text="",
            finish_reason=FINISH.get(self.stop_reason, self.stop_reason),
            usage=Usage(self.prompt_tokens, self.output_tokens),
            model=self.served_model or self.model,
        )

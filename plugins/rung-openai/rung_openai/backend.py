"""The `openai` backend: chat completions through the official SDK, sync and async.

Works with OpenAI and any OpenAI-compatible server (`base_url` with its ``/v1``). Streams
ask for usage (``stream_options.include_usage``); a stream that ends without its finish
reason or its usage raises `APIError(kind="cut_off")` instead of returning partial text.

Requests with `logprobs` get them (chat's ``logprobs``/``top_logprobs``). Requests that are
not a chat (`raw`, `echo`, `prompt_ids`) go to the legacy completions endpoint
(`rung_openai.completions`): that is how `rung serve` and other servers score prompts for
rung-eval. With the `tokenizer` option (the served model's folder) the backend has the
model's tokenizer, so scorers can send token ids.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import openai
from pydantic import BaseModel

from rung.interfaces import Capabilities
from rung.records import Completion, Delta, GenerationRequest, Usage
from rung_openai.tools import tool_calls_of, tool_params, wire_messages
from rung_openai.completions import (
    completion_params,
    completion_result,
    refusals,
    sampling_params,
    uses_completions,
)
from rung_openai.logprobs import chat_entries, completion_entries
from rung_openai.options import OpenAIOptions
from rung.hosted import APIError, HostedBackend, UnsupportedError, one_line, stream_failure

M = TypeVar("M", bound=BaseModel)

FINISH = {
    "stop": "stop",
    "length": "length",
    "content_filter": "content_filter",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
}


class OpenAIBackend(HostedBackend):
    """OpenAI chat completions (or an OpenAI-compatible server)."""

    provider = "openai"
    default_base_url = "https://api.openai.com/v1"
    base_url_env = "OPENAI_BASE_URL"
    base_url_hint = "an OpenAI-compatible base_url usually ends in /v1"
    capabilities = Capabilities(chat=True, streaming=True, structured_output=True, logprobs=True, tools=True)

    options: OpenAIOptions

    def __init__(self, options: OpenAIOptions, tokenizer: Any = None) -> None:
        super().__init__(options, tokenizer)
        field = options.max_tokens_field
        if field == "auto":
            field = "max_tokens" if self.base_url != self.default_base_url else "max_completion_tokens"
        self._max_field = field
        # The served model's tokenizer, when given (token-id prompts, scoring): a tokenizer, or
        # a folder holding one (the option, or `rung.backend("openai", tokenizer="runs/x/model")`).
        folder = tokenizer if isinstance(tokenizer, (str, os.PathLike)) else None
        if tokenizer is None:
            folder = options.tokenizer
        self._tokenizer_folder = Path(folder) if folder else None
        if self._tokenizer_folder is not None:
            from rung.saved_tokenizer import load_saved_tokenizer

            tokenizer = load_saved_tokenizer(self._tokenizer_folder, "openai")
        self.tokenizer = tokenizer

    @property
    def context_length(self) -> int | None:
        """The served model's context in tokens: the context_length option, else the
        tokenizer folder's config.json (max_position_embeddings or max_seq_len), else unknown."""
        if self.options.context_length:
            return self.options.context_length
        if self._tokenizer_folder is None:
            return None
        import json

        try:
            config = json.loads((self._tokenizer_folder / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        for key in ("max_position_embeddings", "max_seq_len"):
            value = config.get(key) if isinstance(config, dict) else None
            if isinstance(value, int) and value > 0:
                return value
        return None

    # -- plumbing
    def _sdk(self) -> Any:
        return openai

    def _sdk_client(self, async_: bool) -> Any:
        o = self.options
        kwargs: dict[str, Any] = {
            # A local server may need no key; the SDK insists on one, so send a placeholder.
            "api_key": self._secret() or "no-key",
            "timeout": o.timeout,
            "max_retries": o.max_retries,
        }
        if self.base_url != self.default_base_url:
            kwargs["base_url"] = self.base_url
        if o.organization:
            kwargs["organization"] = o.organization
        return (openai.AsyncOpenAI if async_ else openai.OpenAI)(**kwargs)

    def params(self, request: GenerationRequest, stream: bool = False) -> dict[str, Any]:
        """The SDK call's keyword arguments: ``completions.create``'s for raw, echo and token-id
        requests (they have a ``prompt``), ``chat.completions.create``'s for the others."""
        if uses_completions(request):
            return completion_params(self, request, stream)
        return self.sdk_params(request, stream)

    def sdk_params(self, request: GenerationRequest, stream: bool = False) -> dict[str, Any]:
        """The keyword arguments of ``chat.completions.create`` for `request`."""
        o = self.options
        params: dict[str, Any] = {
            "model": request.model or o.model,
            "messages": wire_messages(request.chat()),
        }
        params.update(tool_params(request))
        if request.logprobs is not None:
            params["logprobs"] = True
            if request.logprobs > 0:
                params["top_logprobs"] = int(request.logprobs)
        params.update(sampling_params(request, o, max_field=self._max_field, stream=stream))
        return params

    def _completion(self, response: Any, model: str, request: GenerationRequest | None = None) -> Completion:
        if not getattr(response, "choices", None):
            raise APIError(f"openai: the server at {self.base_url} answered with no choices", "malformed")
        choice = response.choices[0]
        message = choice.message
        refusal = getattr(message, "refusal", None)
        calls = tool_calls_of(message)
        if refusal and not message.content and not calls:
            raise APIError(f"openai: model '{model}' refused the request: {one_line(refusal)}", "refused")
        usage = response.usage
        logprobs = None
        if request is not None and request.logprobs is not None:
            content = getattr(choice.logprobs, "content", None)
            if content is None and message.content:
                raise APIError(f"openai: the server at {self.base_url} sent no log-probabilities for model "
                               f"'{model}' though they were asked for", "malformed")
            logprobs = chat_entries(content, request.logprobs)
        finish = FINISH.get(choice.finish_reason or "", choice.finish_reason or "stop")
        return Completion(
            text=message.content or "",
            # (some compatible servers say "stop" beside their tool calls: the calls are what counts)
            finish_reason="tool_calls" if calls else finish,
            usage=Usage(usage.prompt_tokens or 0, usage.completion_tokens or 0) if usage else Usage(),
            model=response.model or model,
            logprobs=logprobs,
            tool_calls=calls,
        )

    # -- generation
    def generate(self, request: GenerationRequest) -> Completion:
        params = self.params(request)
        with self.errors(params["model"]):
            if "prompt" in params:
                with refusals(self, params):
                    response = self.client().completions.create(**params)
                return completion_result(response, request, params, self.base_url)
            response = self.client().chat.completions.create(**params)
            return self._completion(response, params["model"], request)

    async def agenerate(self, request: GenerationRequest) -> Completion:
        params = self.params(request)
        with self.errors(params["model"]):
            if "prompt" in params:
                with refusals(self, params):
                    response = await self.aclient().completions.create(**params)
                return completion_result(response, request, params, self.base_url)
            response = await self.aclient().chat.completions.create(**params)
            return self._completion(response, params["model"], request)

    # -- streaming: the loop is HostedBackend's; these say how this SDK opens a stream
    def stream_state(self, model: str) -> "_StreamState":
        return _StreamState(self, model)

    def open_stream(self, client: Any, params: dict[str, Any]) -> Any:
        if "prompt" not in params:
            return client.chat.completions.create(**params)
        if isinstance(client, openai.AsyncOpenAI):
            async def opened() -> Any:
                with refusals(self, params):
                    return await client.completions.create(**params)

            return opened()
        with refusals(self, params):
            return client.completions.create(**params)

    # -- structured output
    def generate_structured(self, request: GenerationRequest, schema: type[M]) -> M:
        """An instance of the pydantic model `schema`, generated with OpenAI structured outputs.

        The model's JSON schema goes out as ``response_format`` (strict JSON schema); the
        reply is parsed and validated into `schema`. Refusals and replies cut at max tokens
        raise `APIError`.
        """
        params = self._structured_params(request)
        with self.errors(params["model"]):
            response = self.client().chat.completions.parse(response_format=schema, **params)
            return self._parsed(response, params["model"], schema)

    async def agenerate_structured(self, request: GenerationRequest, schema: type[M]) -> M:
        """`generate_structured` for asyncio callers."""
        params = self._structured_params(request)
        with self.errors(params["model"]):
            response = await self.aclient().chat.completions.parse(response_format=schema, **params)
            return self._parsed(response, params["model"], schema)

    def _structured_params(self, request: GenerationRequest) -> dict[str, Any]:
        if uses_completions(request):
            raise UnsupportedError("openai: structured output answers chat requests; a raw, echo or token-id "
                                   "request cannot have it")
        return self.sdk_params(request)

    def _parsed(self, response: Any, model: str, schema: type[M]) -> M:
        message = response.choices[0].message
        if getattr(message, "refusal", None):
            raise APIError(f"openai: model '{model}' refused the request: {one_line(message.refusal)}", "refused")
        if message.parsed is None:
            raise APIError(f"openai: model '{model}' returned no {schema.__name__}", "malformed")
        return message.parsed

    def api_error(self, exc: BaseException, model: str) -> APIError:
        if isinstance(exc, openai.LengthFinishReasonError):
            return APIError(
                f"openai: the structured reply of model '{model}' was cut at max tokens; raise max_tokens", "cut_off"
            )
        if isinstance(exc, openai.ContentFilterFinishReasonError):
            return APIError(
                f"openai: the structured reply of model '{model}' was stopped by the content filter", "refused"
            )
        if type(exc).__name__ == "ValidationError" and not hasattr(exc, "status_code"):
            return APIError(f"openai: the reply of model '{model}' does not fit the requested schema: "
                            f"{one_line(exc, 160)}", "malformed")
        return super().api_error(exc, model)

    def count_tokens(self, text: str) -> int:
        raise UnsupportedError("openai: the OpenAI API has no token-counting endpoint for chat models; use a tokenizer")


class _StreamState:
    """Follows a stream of chunks: text so far, finish reason, usage; checks it completed."""

    def __init__(self, backend: OpenAIBackend, model: str) -> None:
        self.backend, self.model = backend, model
        self.chars = 0
        self.finish: str | None = None
        self.usage: Usage | None = None
        self.refusal = ""
        self.served_model: str | None = None
        self.chunks = 0

    def reading(self) -> Any:
        from contextlib import contextmanager

        @contextmanager
        def guard() -> Iterator[None]:
            try:
                yield
            except APIError:
                raise
            except Exception as exc:
                error = self.backend.api_error(exc, self.model)
                if self.chars or self.finish or error.kind in ("connection", "malformed", "timeout"):
                    raise self.backend.cut_off(self.model, self.chars, stream_failure(exc)) from None
                raise error from None

        return guard()

    def feed(self, chunk: Any) -> Delta | None:
        self.chunks += 1
        if chunk.usage is not None:
            self.usage = Usage(chunk.usage.prompt_tokens or 0, chunk.usage.completion_tokens or 0)
        self.served_model = chunk.model or self.served_model
        text = ""
        entries: list = []
        for choice in chunk.choices or ():
            delta = getattr(choice, "delta", None)  # chat chunks; a completions chunk has `text`
            if delta is not None:
                if delta.content:
                    text += delta.content
                if getattr(delta, "refusal", None):
                    self.refusal += delta.refusal
            elif getattr(choice, "text", None):
                text += choice.text
            if getattr(choice, "logprobs", None) is not None:  # sent when asked: kept as the server sent them
                entries += (chat_entries(choice.logprobs.content, None) if delta is not None
                            else completion_entries(choice.logprobs, None))
            if choice.finish_reason:
                self.finish = FINISH.get(choice.finish_reason, choice.finish_reason)
        if text or entries:
            self.chars += len(text)
            return Delta(text=text, model=self.served_model, logprobs=tuple(entries) if entries else None)
        return None

    def last(self) -> Delta:
        if self.refusal:
            raise APIError(f"openai: model '{self.model}' refused the request: {one_line(self.refusal)}", "refused")
        if self.chunks == 0:
            raise APIError(f"openai: the server at {self.backend.base_url} answered a stream request with no events "
                           "(malformed response)", "malformed")
        if self.finish is None:
            raise self.backend.cut_off(self.model, self.chars, "it ended without a finish reason")
        if self.usage is None and self.backend.options.stream_usage:
            raise self.backend.cut_off(
                self.model, self.chars,
                "it ended before its usage report; for a server that never sends one, set the backend option "
                "stream_usage=false",
            )
        return Delta(text="", finish_reason=self.finish, usage=self.usage, model=self.served_model or self.model)

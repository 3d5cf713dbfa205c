"""The request bodies of rung serve's POST endpoints, as OpenAPI documents them.

The endpoints read their JSON themselves (a body limit counted as it arrives, OpenAI's error
JSON, one-line messages from openai_format), so FastAPI would not know their bodies; these
models put them in /openapi.json, for clients, generators and the schema fuzz. They describe,
they do not validate: extra fields are allowed (OpenAI adds fields often; what rung cannot
honour is refused by openai_format with a 400 naming the field).
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field

Role = Literal["system", "developer", "user", "assistant", "tool"]


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")


class TextPart(_Body):
    type: Literal["text"]
    text: str


class ChatMessage(_Body):
    role: Role
    content: str | list[TextPart] | None = None


class StreamOptions(_Body):
    include_usage: bool | None = None


class _Sampling(_Body):
    model: str | None = Field(None, description="a served model's name (GET /v1/models); optional with one model")
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1, description="vLLM's: sample among the k most likely; -1 or 0: off")
    min_p: float | None = Field(None, ge=0, le=1, description="vLLM's: keep tokens at least min_p times as "
                                "likely as the most likely one; 0: off")
    repetition_penalty: float | None = Field(None, gt=0, description="vLLM's: seen ids' logits divided (positive) or "
                                             "multiplied (negative) by it; 1: off")
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int | None = Field(None, ge=1, description="choices per request: only 1")
    stream: bool | None = None
    stream_options: StreamOptions | None = None


class ChatCompletionBody(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)


class CompletionBody(_Sampling):
    prompt: str | list[str] | list[int] = Field(description="text, or token ids (one prompt per request)")
    max_tokens: int | None = Field(None, ge=0, description="0 only with echo: score the prompt, generate nothing")
    echo: bool | None = None
    logprobs: int | None = Field(None, ge=0, le=5)


class TokenizeBody(_Body):
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None


class DetokenizeBody(_Body):
    model: str | None = None
    tokens: list[int]


BODIES: dict[str, type[BaseModel]] = {
    "/v1/chat/completions": ChatCompletionBody,
    "/v1/completions": CompletionBody,
    "/tokenize": TokenizeBody,
    "/detokenize": DetokenizeBody,
}


def document_bodies(app: FastAPI) -> None:
    """Make `app.openapi()` name the JSON body of each POST endpoint in BODIES."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for path, model in BODIES.items():
            operation = schema.get("paths", {}).get(path, {}).get("post")
            if operation is None:
                continue
            body = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(body.pop("$defs", {}))
            components[model.__name__] = body
            operation["requestBody"] = {"required": True, "content": {"application/json": {
                "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]

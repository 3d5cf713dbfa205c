"""OpenAI's JSON to rung's records and back: request bodies, completions, stream chunks.

Plain functions on dicts, no web framework, so the mapping is tested and read on its own.
A field rung cannot honour yet is refused (`BadRequest`), never silently ignored.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from rung.records import Completion, Delta, GenerationRequest, Message, Usage

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}


class BadRequest(Exception):
    """A request body rung cannot answer; `param` names the field (OpenAI's error `param`)."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message, self.param, self.code = message, param, code


def _int(body: dict[str, Any], name: str, low: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"'{name}' must be an integer, got {value!r}", name)
    if low is not None and value < low:
        raise BadRequest(f"'{name}' must be at least {low}, got {value}", name)
    return value


def _number(body: dict[str, Any], name: str) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRequest(f"'{name}' must be a number, got {value!r}", name)
    return float(value)


def _bool(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise BadRequest(f"'{name}' must be true or false, got {value!r}", name)
    return value


def _stop(body: dict[str, Any]) -> tuple[str, ...]:
    value = body.get("stop")
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        return tuple(value)
    raise BadRequest("'stop' must be a string or a list of strings", "stop")


def _refuse_unsupported(body: dict[str, Any], completions: bool) -> None:
    """Fields that would change the answer and that this server cannot honour yet."""
    if body.get("logprobs") or body.get("top_logprobs"):
        raise BadRequest("logprobs are not supported yet", "logprobs")
    n = _int(body, "n", 1)
    if n not in (None, 1):
        raise BadRequest(f"'n' must be 1 (one choice per request), got {n}", "n")
    for name in ("tools", "functions", "logit_bias"):
        if body.get(name):
            raise BadRequest(f"'{name}' is not supported", name)
    if body.get("tool_choice") not in (None, "none"):
        raise BadRequest("'tool_choice' is not supported", "tool_choice")
    for name in ("presence_penalty", "frequency_penalty"):
        if _number(body, name):
            raise BadRequest(f"'{name}' is not supported (leave it 0)", name)
    response_format = body.get("response_format")
    if response_format not in (None, {"type": "text"}):
        raise BadRequest("'response_format' is not supported (only {\"type\": \"text\"})", "response_format")
    if completions:
        if body.get("echo"):
            raise BadRequest("'echo' is not supported yet", "echo")
        best_of = _int(body, "best_of", 1)
        if best_of not in (None, 1):
            raise BadRequest(f"'best_of' must be 1, got {best_of}", "best_of")
        if body.get("suffix"):
            raise BadRequest("'suffix' is not supported", "suffix")


def _sampling(body: dict[str, Any]) -> dict[str, Any]:
    max_tokens = _int(body, "max_completion_tokens", 1)
    if max_tokens is None:
        max_tokens = _int(body, "max_tokens", 1)
    return dict(max_tokens=max_tokens, temperature=_number(body, "temperature"), top_p=_number(body, "top_p"),
                stop=_stop(body), seed=_int(body, "seed"))


def stream_flags(body: dict[str, Any]) -> tuple[bool, bool]:
    """(stream, include_usage) of a request body."""
    stream = _bool(body, "stream")
    options = body.get("stream_options")
    if options is None:
        return stream, False
    if not isinstance(options, dict):
        raise BadRequest("'stream_options' must be an object", "stream_options")
    if not stream:
        raise BadRequest("'stream_options' is only allowed with \"stream\": true", "stream_options")
    return stream, _bool(options, "include_usage")


def _content(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, list):  # content parts: text only
        texts = []
        for part in value:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise BadRequest(f"{where}: only text content parts are supported", where)
            texts.append(part["text"])
        return "".join(texts)
    raise BadRequest(f"{where}: content must be a string or a list of text parts", where)


def chat_request(body: dict[str, Any]) -> GenerationRequest:
    """The GenerationRequest of a /v1/chat/completions body."""
    _refuse_unsupported(body, completions=False)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list", "messages")
    turns = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise BadRequest(f"{where} must be an object with 'role' and 'content'", where)
        role = ROLES.get(message.get("role"))  # type: ignore[arg-type]
        if role is None:
            raise BadRequest(f"{where}.role must be one of {', '.join(ROLES)}, got {message.get('role')!r}",
                             f"{where}.role")
        turns.append(Message(role, _content(message.get("content"), f"{where}.content")))
    return GenerationRequest(messages=tuple(turns), **_sampling(body))


def completion_request(body: dict[str, Any]) -> GenerationRequest:
    """The GenerationRequest of a /v1/completions body: the prompt continued as plain text."""
    _refuse_unsupported(body, completions=True)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise BadRequest("'prompt' must be a string (one prompt per request)", "prompt")
    return GenerationRequest(prompt=prompt, raw=True, **_sampling(body))


def usage_json(usage: Usage | None) -> dict[str, int]:
    usage = usage or Usage()
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens}


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def chat_completion(done: Completion, model: str) -> dict[str, Any]:
    return {
        "id": new_id("chatcmpl"), "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": done.text},
                     "finish_reason": done.finish_reason, "logprobs": None}],
        "usage": usage_json(done.usage),
    }


def text_completion(done: Completion, model: str) -> dict[str, Any]:
    return {
        "id": new_id("cmpl"), "object": "text_completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "text": done.text, "finish_reason": done.finish_reason, "logprobs": None}],
        "usage": usage_json(done.usage),
    }


class Chunks:
    """The chunks of one streamed answer, in OpenAI's shape (`chat`: chat.completion.chunk,
    else text_completion); with `include_usage`, a last chunk with empty choices and the usage."""

    def __init__(self, model: str, chat: bool, include_usage: bool) -> None:
        self.model, self.chat, self.include_usage = model, chat, include_usage
        self.id = new_id("chatcmpl" if chat else "cmpl")
        self.created = int(time.time())
        self.started = False

    def _chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        out = {"id": self.id, "object": "chat.completion.chunk" if self.chat else "text_completion",
               "created": self.created, "model": self.model, "choices": choices}
        if self.include_usage:
            out["usage"] = None
        return out

    def _choice(self, text: str | None, finish: str | None) -> dict[str, Any]:
        if not self.chat:
            return {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}
        delta: dict[str, Any] = {}
        if not self.started:
            delta["role"] = "assistant"
        if text is not None:
            delta["content"] = text
        return {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}

    def of(self, delta: Delta) -> list[dict[str, Any]]:
        """The chunks one rung Delta becomes."""
        out = []
        if delta.text or (self.chat and not self.started):
            out.append(self._chunk([self._choice(delta.text, None)]))
            self.started = True
        if delta.finish_reason is not None:
            out.append(self._chunk([self._choice(None if self.chat else "", delta.finish_reason)]))
            self.started = True
            if self.include_usage:
                last = self._chunk([])
                last["usage"] = usage_json(delta.usage)
                out.append(last)
        return out

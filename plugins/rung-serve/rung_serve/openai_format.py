"""OpenAI's JSON to rung's records and back: request bodies, completions, stream chunks.

Plain functions on dicts, no web framework, so the mapping is tested and read on its own.
A field rung cannot honour yet is refused (`BadRequest`), never silently ignored. vLLM's
extra sampling fields `top_k` (-1: off), `min_p` and `repetition_penalty` are read too.

Log-probabilities as OpenAI gives them: on chat, `logprobs: true` (+ `top_logprobs` 0..20)
answers `choices[].logprobs.content[] = {token, logprob, bytes, top_logprobs: [{token, logprob,
bytes}]}`, in stream chunks too; on completions, `logprobs` 0..5 answers `choices[].logprobs =
{tokens, token_logprobs, top_logprobs: [{token: logprob}], text_offset}`, and `echo` puts the
prompt first (its first token's logprob and top_logprobs null) with text = prompt + completion.
`text_offset` counts the tokens' characters from the start of `choices[].text` (continued across
stream chunks), as vLLM does: it indexes the text exactly where each token is whole characters. A `prompt` may be
token ids (lm-evaluation-harness's `local-completions` sends them): scored as given. Only a
backend whose `capabilities.logprobs` is True answers log-probabilities (`check_backend`).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from rung.records import Completion, Delta, GenerationRequest, Message, TokenLogprob, Usage, check_sampling_values

MAX_TOP_LOGPROBS = {"chat": 20, "completions": 5}  # OpenAI's limits
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
        best_of = _int(body, "best_of", 1)
        if best_of not in (None, 1):
            raise BadRequest(f"'best_of' must be 1, got {best_of}", "best_of")
        if body.get("suffix"):
            raise BadRequest("'suffix' is not supported", "suffix")


def _sampling(body: dict[str, Any], echo: bool = False) -> dict[str, Any]:
    low = 0 if echo else 1  # max_tokens 0 with echo: score the prompt, generate nothing
    max_tokens = _int(body, "max_completion_tokens", low)
    if max_tokens is None:
        max_tokens = _int(body, "max_tokens", low)
    top_k = _int(body, "top_k", -1)
    extra = {"top_k": None if top_k in (None, -1) else top_k}  # vLLM's -1: off (0 too)
    for name in ("min_p", "repetition_penalty"):  # vLLM's extra sampling fields
        extra[name] = _number(body, name)
        try:
            check_sampling_values(**{name: extra[name]})
        except ValueError as exc:
            raise BadRequest(str(exc), name) from None
    return dict(max_tokens=max_tokens, temperature=_number(body, "temperature"), top_p=_number(body, "top_p"),
                stop=_stop(body), seed=_int(body, "seed"), **extra)


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


def _chat_logprobs(body: dict[str, Any]) -> int | None:
    """Chat's `logprobs` (true/false) and `top_logprobs` (0..20) as GenerationRequest.logprobs."""
    wanted = _bool(body, "logprobs")
    top = _int(body, "top_logprobs", 0)
    if top is not None and top > MAX_TOP_LOGPROBS["chat"]:
        raise BadRequest(f"'top_logprobs' must be at most {MAX_TOP_LOGPROBS['chat']}, got {top}", "top_logprobs")
    if top is not None and not wanted:
        raise BadRequest("'top_logprobs' needs \"logprobs\": true", "top_logprobs")
    return (top or 0) if wanted else None


def _completion_logprobs(body: dict[str, Any]) -> int | None:
    """Completions' `logprobs` (0..5: the chosen token's, and that many most likely)."""
    top = _int(body, "logprobs", 0)
    if top is not None and top > MAX_TOP_LOGPROBS["completions"]:
        raise BadRequest(f"'logprobs' must be at most {MAX_TOP_LOGPROBS['completions']}, got {top}", "logprobs")
    return top


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
    return GenerationRequest(messages=tuple(turns), logprobs=_chat_logprobs(body), **_sampling(body))


def completion_request(body: dict[str, Any]) -> GenerationRequest:
    """The GenerationRequest of a /v1/completions body: the prompt continued as plain text."""
    _refuse_unsupported(body, completions=True)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # one prompt in a list (lm-evaluation-harness sends [[ids]])
    ids = None
    if isinstance(prompt, list) and prompt and all(isinstance(i, int) and not isinstance(i, bool) for i in prompt):
        ids, prompt = tuple(prompt), ""
    elif not isinstance(prompt, str):
        raise BadRequest("'prompt' must be a string or a list of token ids (one prompt per request)", "prompt")
    echo = _bool(body, "echo")
    logprobs = _completion_logprobs(body)
    if echo and ids is not None and logprobs is None:
        raise BadRequest("'echo' of a token prompt needs 'logprobs' (its text comes from the scored tokens)", "echo")
    if echo and logprobs is not None and _bool(body, "stream"):
        raise BadRequest("'echo' with 'logprobs' cannot be streamed: ask without \"stream\"", "echo")
    return GenerationRequest(prompt=prompt, prompt_ids=ids, raw=True, logprobs=logprobs, echo=echo,
                             **_sampling(body, echo))


def check_backend(request: GenerationRequest, backend: Any) -> None:
    """Refuse what the backend cannot answer: log-probabilities without the capability, a token
    prompt without a tokenizer to read it."""
    capabilities = getattr(backend, "capabilities", None)
    if request.logprobs is not None and not getattr(capabilities, "logprobs", False):
        raise BadRequest("this model does not give log-probabilities (its backend has no logprobs capability)",
                         "logprobs")
    if request.prompt_ids is not None and getattr(backend, "tokenizer", None) is None:
        raise BadRequest("this model takes text prompts only (its backend has no tokenizer to read token ids)",
                         "prompt")


def usage_json(usage: Usage | None) -> dict[str, int]:
    usage = usage or Usage()
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens}


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def _utf8(text: str) -> list[int]:
    return list(text.encode("utf-8"))


def chat_logprobs(entries: tuple[TokenLogprob, ...] | None) -> dict[str, Any] | None:
    """`choices[].logprobs` of chat: {content: [{token, logprob, bytes, top_logprobs}], refusal}."""
    if entries is None:
        return None
    content = [{"token": t.token, "logprob": t.logprob, "bytes": _utf8(t.token),
                "top_logprobs": [{"token": token, "logprob": value, "bytes": _utf8(token)} for token, value in t.top]}
               for t in entries]
    return {"content": content, "refusal": None}


def completion_logprobs(entries: tuple[TokenLogprob, ...], offset: int = 0) -> dict[str, Any]:
    """`choices[].logprobs` of completions; `offset`: where the first token's text starts in the
    choice's text (a streamed chunk continues from the characters sent before it)."""
    offsets = []
    for t in entries:
        offsets.append(offset)
        offset += len(t.token)
    tops: list[dict[str, float] | None] = []
    for i, t in enumerate(entries):
        if t.logprob is None:  # the prompt's first token: nothing predicts it
            tops.append(None)
            continue
        top: dict[str, float] = {}
        for token, value in t.top:  # best first: two ids of one text keep the better
            top.setdefault(token, value)
        tops.append(top)
    return {"tokens": [t.token for t in entries], "token_logprobs": [t.logprob for t in entries],
            "top_logprobs": tops, "text_offset": offsets}


def chat_completion(done: Completion, model: str, request: GenerationRequest | None = None) -> dict[str, Any]:
    return {
        "id": new_id("chatcmpl"), "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": done.text},
                     "finish_reason": done.finish_reason, "logprobs": chat_logprobs(done.logprobs)}],
        "usage": usage_json(done.usage),
    }


def echoed_prompt(request: GenerationRequest | None, done: Completion | None = None) -> str:
    """The prompt text `echo` puts first: as sent, or a token prompt's scored tokens."""
    if request is None or not request.echo:
        return ""
    if request.prompt_ids is not None:
        return "".join(t.token for t in (done.prompt_logprobs if done is not None else None) or ())
    return request.prompt or ""


def text_completion(done: Completion, model: str, request: GenerationRequest | None = None) -> dict[str, Any]:
    prompt = echoed_prompt(request, done)
    logprobs = None
    if request is not None and request.logprobs is not None:
        entries = (*(done.prompt_logprobs or ()), *(done.logprobs or ())) if request.echo else done.logprobs or ()
        logprobs = completion_logprobs(tuple(entries))
    return {
        "id": new_id("cmpl"), "object": "text_completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "text": prompt + done.text, "finish_reason": done.finish_reason,
                     "logprobs": logprobs}],
        "usage": usage_json(done.usage),
    }


class Chunks:
    """The chunks of one streamed answer, in OpenAI's shape (`chat`: chat.completion.chunk,
    else text_completion); with `include_usage`, a last chunk with empty choices and the usage."""

    def __init__(self, model: str, chat: bool, include_usage: bool, request: GenerationRequest | None = None) -> None:
        self.model, self.chat, self.include_usage = model, chat, include_usage
        self.id = new_id("chatcmpl" if chat else "cmpl")
        self.created = int(time.time())
        self.started = False
        self.logprobs = request is not None and request.logprobs is not None
        self.echo = echoed_prompt(request)  # streamed echo: the prompt text, without logprobs
        self.sent = 0  # characters of the tokens sent: where the next chunk's text_offset starts

    def _chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        out = {"id": self.id, "object": "chat.completion.chunk" if self.chat else "text_completion",
               "created": self.created, "model": self.model, "choices": choices}
        if self.include_usage:
            out["usage"] = None
        return out

    def _choice(self, text: str | None, finish: str | None,
                entries: tuple[TokenLogprob, ...] | None = None) -> dict[str, Any]:
        if not self.chat:
            logprobs = completion_logprobs(entries or (), self.sent) if self.logprobs else None
            self.sent += sum(len(t.token) for t in entries or ())
            return {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": logprobs}
        delta: dict[str, Any] = {}
        if not self.started:
            delta["role"] = "assistant"
        if text is not None:
            delta["content"] = text
        logprobs = chat_logprobs(entries or ()) if self.logprobs and (text or entries) else None
        return {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": logprobs}

    def of(self, delta: Delta) -> list[dict[str, Any]]:
        """The chunks one rung Delta becomes."""
        out = []
        if self.echo and not self.started and not self.chat:
            out.append(self._chunk([self._choice(self.echo, None)]))  # echo: the prompt first
        text, entries = delta.text, delta.logprobs
        if text or entries or (self.chat and not self.started):
            out.append(self._chunk([self._choice(text, None, entries)]))
            self.started = True
        if delta.finish_reason is not None:
            out.append(self._chunk([self._choice(None if self.chat else "", delta.finish_reason)]))
            self.started = True
            if self.include_usage:
                last = self._chunk([])
                last["usage"] = usage_json(delta.usage)
                out.append(last)
        return out

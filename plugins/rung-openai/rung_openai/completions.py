"""The legacy completions endpoint (``/v1/completions``): raw continuation, echo, token-id prompts.

A chat endpoint only answers messages, so the requests that are not a chat go here: `raw`
(continue the text as it is), `echo` (score the prompt: `Completion.prompt_logprobs`, the
log-likelihood requests of lm-evaluation-harness and rung-eval, max_tokens 0 allowed) and
`prompt_ids` (the prompt as token ids, scored as sent). `rung serve`, vLLM and llama.cpp's
server answer it; OpenAI answers it only for its few completion models. A server that has no
such endpoint for the model, or refuses echo, is one `UnsupportedError` line.

`Completion.text` is what was generated, as on every rung backend: the echoed prompt the
server puts first is cut off (its length: the prompt text, or a token prompt's echoed tokens).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rung.errors import RungError
from rung.hosted import UnsupportedError, first, one_line
from rung.records import Completion, GenerationRequest, TokenLogprob, Usage
from rung_openai.logprobs import completion_entries

FINISH = {"stop": "stop", "length": "length", "content_filter": "content_filter"}

# What servers say when the endpoint exists but not for this model, or echo is refused:
# OpenAI: "This is a chat model and not supported in the v1/completions endpoint", "echo is not
# supported ..."; others: "not supported", "no route".
_CHAT_ONLY = re.compile(r"chat model|completions", re.I)
_MODEL = re.compile(r"\bmodel\b", re.I)
_REFUSES = re.compile(r"chat model|not supported|unsupported|echo|completions endpoint|no route|not found", re.I)


def uses_completions(request: GenerationRequest) -> bool:
    """Whether `request` goes to the completions endpoint rather than chat."""
    return bool(request.raw or request.echo or request.prompt_ids is not None)


def prompt_of(request: GenerationRequest, tokenizer: Any) -> tuple[str, tuple[int, ...] | None]:
    """(text, ids): the prompt to continue; ids when the request gives them, or when the chat
    template of the backend's tokenizer wrote the text (its special tokens are ids, not text)."""
    if request.prompt_ids is not None:
        return "", tuple(int(i) for i in request.prompt_ids)
    if not request.messages and not request.system:
        return request.prompt or "", None
    from rung.decoding.prompt import encode_text, has_chat_template, plain_text

    turns = request.chat()
    if request.raw or tokenizer is None or not has_chat_template(tokenizer):
        return plain_text(turns), None
    text = tokenizer.apply_chat_template(turns, add_generation_prompt=True)
    return text, tuple(encode_text(tokenizer, text, chat=True))


def completion_params(backend: Any, request: GenerationRequest, stream: bool = False) -> dict[str, Any]:
    """The keyword arguments of ``completions.create`` for `request`.

    A stream does not ask for echo: its deltas carry generated text only, and servers refuse
    to stream echoed log-probabilities.
    """
    o = backend.options
    text, ids = prompt_of(request, backend.tokenizer)
    params: dict[str, Any] = {"model": request.model or o.model, "prompt": list(ids) if ids is not None else text}
    if request.logprobs is not None:
        params["logprobs"] = int(request.logprobs)
    if request.echo and not stream:
        params["echo"] = True
    # the legacy endpoint knows no max_completion_tokens
    params.update(sampling_params(request, o, max_field="max_tokens", stream=stream))
    return params


def sampling_params(request: GenerationRequest, o: Any, max_field: str, stream: bool) -> dict[str, Any]:
    """What chat and legacy completions requests send alike: the token limit (as `max_field`),
    temperature, top_p, seed, stops, `extra_body` (with top_k, min_p and repetition_penalty,
    which vLLM and llama.cpp take)
    and the stream options; the request's values first, else the backend options'."""
    params: dict[str, Any] = {}
    max_tokens = first(request.max_tokens, o.max_tokens)
    if max_tokens is not None:
        params[max_field] = max_tokens
    for name in ("temperature", "top_p", "seed"):
        value = first(getattr(request, name), getattr(o, name))
        if value is not None:
            params[name] = value
    stop = list(request.stop or o.stop)
    if stop:
        params["stop"] = stop
    extra = dict(o.extra_body)
    for name in ("top_k", "min_p", "repetition_penalty"):  # vLLM's and llama.cpp's sampling fields
        if getattr(request, name) is not None:
            extra[name] = getattr(request, name)
    if extra:
        params["extra_body"] = extra
    if stream:
        params["stream"] = True
        if o.stream_usage:
            params["stream_options"] = {"include_usage": True}
    return params


def completion_result(response: Any, request: GenerationRequest, params: dict[str, Any], base_url: str) -> Completion:
    """The rung Completion of a completions response to `params` (sent for `request`)."""
    from rung.hosted import APIError

    if not getattr(response, "choices", None):
        raise APIError(f"openai: the server at {base_url} answered with no choices", "malformed")
    choice = response.choices[0]
    usage = response.usage
    prompt = params["prompt"]
    ids = prompt if isinstance(prompt, list) else None
    top = int(request.logprobs or 0)
    entries = completion_entries(choice.logprobs, top, ids if params.get("echo") else None)
    text = choice.text or ""
    prompt_entries: tuple[TokenLogprob, ...] | None = None
    generated: tuple[TokenLogprob, ...] | None = entries if request.logprobs is not None else None
    if params.get("echo"):
        count = _prompt_count(entries, ids, usage, prompt)
        if ids is not None and choice.logprobs is not None:
            echoed = "".join(t.token for t in entries[:count])  # the text a token prompt echoes as
        else:
            echoed = prompt if isinstance(prompt, str) else ""
        if not text.startswith(echoed):
            raise APIError(f"openai: the server at {base_url} echoed a different prompt than was sent "
                           f"({one_line(text[:40])!r}...)", "malformed")
        text = text[len(echoed):]
        if request.logprobs is not None:
            if choice.logprobs is None:
                raise APIError(f"openai: the server at {base_url} sent no log-probabilities for an echo request",
                               "malformed")
            prompt_entries, generated = entries[:count], entries[count:]
    finish = choice.finish_reason or "stop"
    return Completion(
        text=text,
        finish_reason=FINISH.get(finish, finish),
        usage=Usage(usage.prompt_tokens or 0, usage.completion_tokens or 0) if usage else Usage(),
        model=response.model or params["model"],
        logprobs=generated,
        prompt_logprobs=prompt_entries,
    )


def _prompt_count(entries: tuple[TokenLogprob, ...], ids: list[int] | None, usage: Any, prompt: Any) -> int:
    """How many of the echoed tokens are the prompt's: a token prompt's length, else the server's
    prompt token count, else the tokens that start inside the prompt text."""
    if ids is not None:
        return len(ids)
    if usage is not None and usage.prompt_tokens:
        return int(usage.prompt_tokens)
    length, count = len(prompt), 0
    for entry in entries:
        if length <= 0:
            break
        length -= len(entry.token)
        count += 1
    return count


def what_needs_it(params: dict[str, Any]) -> str:
    """The feature a completions request was for, as a user asked for it."""
    if params.get("echo"):
        return "scoring a prompt (echo with logprobs)" if "logprobs" in params else "echo"
    if isinstance(params.get("prompt"), list):
        return "a token-id prompt"
    return "raw continuation (--raw)"


@contextmanager
def refusals(backend: Any, params: dict[str, Any]) -> Iterator[None]:
    """A server without the completions endpoint for this model, or one that refuses echo:
    one `UnsupportedError` line saying what needed it (the key never shown)."""
    try:
        yield
    except RungError:
        raise
    except Exception as exc:
        refused = refusal(backend, exc, params)
        if refused is None:
            raise
        raise refused from None


def refusal(backend: Any, exc: BaseException, params: dict[str, Any]) -> UnsupportedError | None:
    """The UnsupportedError a 400/404/405/501 answer to a completions request is, else None
    (other failures are the backend's usual errors)."""
    status = getattr(exc, "status_code", None)
    if status not in (400, 404, 405, 501):
        return None
    body = getattr(exc, "body", None)
    err = body.get("error", body) if isinstance(body, dict) else {}
    err = err if isinstance(err, dict) else {}
    message = one_line(backend._scrub(str(err.get("message") or getattr(exc, "message", "") or exc)), 160)
    code = str(err.get("code") or "")
    if code == "model_not_found" or (status == 400 and not _REFUSES.search(message)):
        return None  # an unknown model, or a bad value: the usual error says which
    if status == 404 and _MODEL.search(message) and not _CHAT_ONLY.search(message):
        return None  # "the model `x` does not exist": the usual unknown-model error
    model = params.get("model")
    return UnsupportedError(backend._scrub(
        f"openai: {what_needs_it(params)} needs a local backend or a server with the completions endpoint "
        f"(/v1/completions: rung serve, vLLM, llama.cpp); {backend.base_url} refused it for model '{model}' "
        f"({status}: {message})"))

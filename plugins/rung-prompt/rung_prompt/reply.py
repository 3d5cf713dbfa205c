"""A reply as the terminal sees it: streamed to stdout, noted on stderr, recorded in the log."""

from __future__ import annotations

import contextlib
import functools
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import click

from rung_prompt.target import Target


@dataclass
class Reply:
    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    model: str | None = None
    duration_s: float = 0.0
    first_token_s: float | None = None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)  # calls made on the way (--tool), as logged


def write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


@contextlib.contextmanager
def _end_line(reply: Reply) -> Iterator[None]:
    """If a stream fails after some text, end the line so the error starts on its own."""
    try:
        yield
    except BaseException:
        if reply.text and not reply.text.endswith("\n"):
            write("\n")
        raise


def run_request(target: Target, request: Any, stream: bool) -> Reply:
    """Send `request`, writing the reply to stdout as it comes."""
    reply = Reply()
    start = time.perf_counter()
    if stream:
        deltas = target.backend.stream(request)
        with contextlib.closing(deltas) if hasattr(deltas, "close") else contextlib.nullcontext(), _end_line(reply):
            for delta in deltas:
                if delta.text:
                    if reply.first_token_s is None:
                        reply.first_token_s = time.perf_counter() - start
                    reply.text += delta.text
                    write(delta.text)
                if delta.finish_reason is not None:
                    reply.finish_reason = delta.finish_reason
                if delta.usage is not None:
                    reply.prompt_tokens, reply.completion_tokens = (
                        delta.usage.prompt_tokens,
                        delta.usage.completion_tokens,
                    )
                reply.model = delta.model or reply.model
    else:
        done = target.backend.generate(request)
        reply.text, reply.finish_reason, reply.model = done.text, done.finish_reason, done.model
        reply.prompt_tokens, reply.completion_tokens = done.usage.prompt_tokens, done.usage.completion_tokens
        reply.first_token_s = time.perf_counter() - start
        write(done.text)
    reply.duration_s = time.perf_counter() - start
    if not reply.text.endswith("\n"):
        write("\n")
    return reply


def note(reply: Reply, target: Target, verbose: bool) -> None:
    """What stderr says after a reply: a cut at the token limit; with -v, model, usage, timing."""
    if reply.finish_reason == "length":
        click.echo("rung: the reply stopped at the token limit (--max-tokens)", err=True)
    if verbose:
        tokens = (
            ""
            if reply.prompt_tokens is None
            else f" | {reply.prompt_tokens} prompt + {reply.completion_tokens} completion tokens"
        )
        first = "" if reply.first_token_s is None else f" | first token {reply.first_token_s:.2f} s"
        click.echo(
            f"[{target.name} {reply.model or target.model}{tokens} | {reply.duration_s:.2f} s{first} | "
            f"{reply.finish_reason}]",
            err=True,
        )


def log_reply(
    target: Target,
    settings: dict[str, Any],
    prompt: str,
    system: str | None,
    reply: Reply,
    conversation: str | None = None,
) -> None:
    """Record the exchange in the prompt log; `settings` are the request's (sampling, raw)."""
    from rung_prompt import logdb

    options = dict(target.options)
    options.update({k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()})
    logdb.record(
        backend=target.name, model=reply.model or target.model, options=options, prompt=prompt,
        response=reply.text, system=system, conversation=conversation, finish_reason=reply.finish_reason,
        prompt_tokens=reply.prompt_tokens, completion_tokens=reply.completion_tokens,
        duration_s=round(reply.duration_s, 4),
        first_token_s=None if reply.first_token_s is None else round(reply.first_token_s, 4),
        tool_calls=reply.tool_calls or None,
    )


def quiet_broken_pipe(func: Callable[..., Any]) -> Callable[..., Any]:
    """A command whose reader goes away (`rung prompt ... | head`) ends quietly, status 0."""
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except BrokenPipeError:  # `rung prompt ... | head`
            sys.stderr.close()
            raise SystemExit(0) from None

    return wrapper

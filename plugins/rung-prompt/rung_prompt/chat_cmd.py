"""`rung chat`: a conversation with a backend in the terminal, one line per turn."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator

import click

from rung.errors import RungError
from rung_prompt.options import backend_options, sampling
from rung_prompt.reply import log_reply, note, quiet_broken_pipe, run_request
from rung_prompt.target import build_target


def _lines(tty: bool) -> Iterator[str]:
    """User lines until EOF (Ctrl-D) or Ctrl-C at the prompt."""
    if tty:
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:
            pass
    while True:
        try:
            line = input("> ") if tty else sys.stdin.readline()
        except (EOFError, KeyboardInterrupt):
            return
        if not tty and line == "":
            return
        yield line.rstrip("\n")


@click.command()
@backend_options
@click.option("-v", "--verbose", is_flag=True, help="print token usage and timing after each reply")
@quiet_broken_pipe
def chat(backend: str | None, model: str | None, config: str | None, options: tuple[str, ...], system: str | None,
         temperature: float | None, top_p: float | None, max_tokens: int | None, stop: tuple[str, ...],
         seed: int | None, no_log: bool, verbose: bool) -> None:
    """Chat with a backend: each line you type is a turn; replies stream back.

    The conversation is kept and sent with every turn. Ctrl-D (or /exit) leaves; Ctrl-C
    stops a reply that is streaming, or leaves at the prompt; /reset starts over.
    Reads lines from stdin when it is not a terminal.
    """
    from rung.records import GenerationRequest, Message

    target = build_target(backend, model, config, options)
    settings = sampling(temperature, top_p, max_tokens, stop, seed)
    tty = sys.stdin.isatty()
    conversation = uuid.uuid4().hex[:12]
    history: list[Message] = []
    if tty:
        click.echo(
            f"chatting with {target.name} {target.model or ''} (Ctrl-D or /exit to leave, /reset to start over)",
            err=True,
        )
    try:
        for line in _lines(tty):
            command = line.strip()
            if not command:
                continue
            if command in ("/exit", "/quit"):
                break
            if command == "/reset":
                history.clear()
                click.echo("(conversation cleared)", err=True)
                continue
            history.append(Message("user", line))
            request = GenerationRequest(messages=tuple(history), system=system, **settings)
            try:
                reply = run_request(target, request, stream=True)
            except KeyboardInterrupt:
                history.pop()
                click.echo("(reply stopped)", err=True)
                continue
            except RungError as exc:
                history.pop()
                if not tty:
                    raise
                click.echo(f"rung: error: {exc}", err=True)
                continue
            history.append(Message("assistant", reply.text))
            note(reply, target, verbose)
            if not no_log:
                log_reply(target, settings, line, system, reply, conversation=conversation)
    except KeyboardInterrupt:  # Ctrl-C between replies: leave, as at the prompt
        pass
    if tty:
        click.echo("", err=True)

"""`rung chat`: a conversation with a backend in the terminal, one line per turn."""

from __future__ import annotations

import itertools
import sys
import uuid
from collections.abc import Iterator

import click

from rung.errors import RungError
from rung_prompt.options import backend_options, sampling
from rung_prompt.reply import log_reply, note, quiet_broken_pipe, run_request
from rung_prompt.target import build_target
from rung_prompt.templating import template_options


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
@template_options
@click.option("-v", "--verbose", is_flag=True, help="print token usage and timing after each reply")
@quiet_broken_pipe
def chat(backend: str | None, model: str | None, config: str | None, options: tuple[str, ...], system: str | None,
         temperature: float | None, top_p: float | None, max_tokens: int | None, stop: tuple[str, ...],
         seed: int | None, no_log: bool, template: str | None, params: tuple[str, ...], verbose: bool) -> None:
    """Chat with a backend: each line you type is a turn; replies stream back.

    The conversation is kept and sent with every turn. Ctrl-D (or /exit) leaves; Ctrl-C
    stops a reply that is streaming, or leaves at the prompt; /reset starts over.
    Reads lines from stdin when it is not a terminal.

    With -t NAME the template's system prompt and few-shot turns start the chat (and /reset
    returns to them); a template prompt with {{ input }} wraps each line you type, and one
    without it is sent as the first turn.
    """
    from rung.records import GenerationRequest, Message
    from rung_prompt import templating

    loaded, variables = templating.load(template, params)
    settings = sampling(temperature, top_p, max_tokens, stop, seed)
    request_settings = templating.sampling_defaults(loaded, settings)
    start: list[Message] = []
    opening: str | None = None  # a template prompt without {{ input }}: the first turn
    if loaded is not None:
        start = list(loaded.examples)
        if loaded.tools:
            click.echo(f"rung: template '{loaded.name}' declares tools; rung chat does not call tools "
                       f"(rung prompt -t {loaded.name} does)", err=True)
        if system is None:
            system = templating.render(loaded, lambda: loaded.render_system(variables))
        if loaded.prompt is not None and not loaded.takes_input:
            opening = templating.render(loaded, lambda: loaded.render_prompt(variables))
        elif loaded.prompt is not None:  # check the variables now, not at the first line
            templating.render(loaded, lambda: loaded.render_prompt({"input": "", **variables}))
    backend, model, options = templating.backend_defaults(loaded, backend, model, config, options)
    target = build_target(backend, model, config, options)

    def user_turn(line: str) -> str:
        if loaded is None or opening is not None or loaded.prompt is None:
            return line  # no template prompt to wrap the line in (or it was the opening turn)
        return loaded.render_prompt({**variables, "input": line})

    tty = sys.stdin.isatty()
    conversation = uuid.uuid4().hex[:12]
    history: list[Message] = list(start)
    if tty:
        click.echo(
            f"chatting with {target.name} {target.model or ''} (Ctrl-D or /exit to leave, /reset to start over)",
            err=True,
        )
    lines = _lines(tty)
    if opening is not None:
        lines = itertools.chain([opening], lines)
    try:
        for line in lines:
            command = line.strip()
            if not command:
                continue
            if command in ("/exit", "/quit"):
                break
            if command == "/reset":
                history[:] = start
                click.echo("(conversation cleared)", err=True)
                continue
            turn = user_turn(line)
            history.append(Message("user", turn))
            request = GenerationRequest(messages=tuple(history), system=system, **request_settings)
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
                log_reply(target, templating.logged_settings(loaded, request_settings), turn, system, reply,
                          conversation=conversation)
    except KeyboardInterrupt:  # Ctrl-C between replies: leave, as at the prompt
        pass
    if tty:
        click.echo("", err=True)

"""`rung prompt`, `rung chat`, `rung logs`, `rung keys`: any backend, from the terminal.

The backend is chosen by name (``-b openai -m gpt-4o-mini``) or taken from a run config
(``-c config.yaml``, its ``backend`` section); ``-o key=value`` sets backend options
(``-o base_url=http://localhost:8000/v1``). Replies stream to stdout; notes go to stderr.
Every exchange is logged to ``<config dir>/logs.db`` unless ``--no-log``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import click

from rung.errors import RungError

DEFAULT_BACKEND = "openai"


# ------------------------------------------------------------------ building the backend


@dataclass
class Target:
    """The backend built from the command line, and what the log records about it."""

    backend: Any
    name: str
    model: str | None
    options: dict[str, Any] = field(default_factory=dict)  # backend options, secrets left out


def build_target(backend: str | None, model: str | None, config: str | None, options: tuple[str, ...]) -> Target:
    """The backend of `config` (or named `backend`), with `model` and `-o` options applied."""
    from rung.config import apply_override, config_to_dict
    from rung.plugins import get_plugins
    from rung.runner import build

    plugins = get_plugins()
    for item in options:
        if "=" not in item:
            raise RungError(f"-o {item}: expected KEY=VALUE, e.g. -o base_url=http://localhost:8000/v1")
    if config is not None:
        from rung.config import load_config

        overrides = [f"backend.{item}" for item in options]
        if backend:
            overrides.insert(0, f"backend.name={backend}")
        if model:
            overrides.append(f"backend.model={model}")
        section = load_config(config, overrides).backend
    else:
        from rung.api import make_config_section

        data: dict[str, Any] = {"name": backend or DEFAULT_BACKEND}
        if model:
            data["model"] = model
        for item in options:
            apply_override(data, item)
        plugins.registry.get("backend", data["name"])  # unknown name: one line listing those installed
        section = make_config_section("backend", data)
    instance = build(plugins, "backend", section)
    logged = config_to_dict(section)
    logged.pop("name", None)
    return Target(instance, section.name, getattr(section, "model", None), logged)


def backend_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The options `prompt` and `chat` share."""
    decorators = [
        click.option("-b", "--backend", help=f"backend name (default: {DEFAULT_BACKEND}, or the config's)"),
        click.option("-m", "--model", help="model name, e.g. gpt-4o-mini"),
        click.option("-c", "--config", type=click.Path(dir_okay=False), help="take the backend section of this run config"),
        click.option("-o", "--option", "options", multiple=True, metavar="KEY=VALUE", help="backend option, e.g. -o base_url=http://localhost:8000/v1 (repeatable)"),
        click.option("-s", "--system", help="system prompt"),
        click.option("-t", "--temperature", type=float, help="sampling temperature"),
        click.option("--top-p", type=float, help="nucleus sampling probability"),
        click.option("--max-tokens", type=int, help="most tokens to generate"),
        click.option("--stop", multiple=True, help="stop sequence (repeatable)"),
        click.option("--seed", type=int, help="sampling seed, where the backend has one"),
        click.option("--no-log", is_flag=True, help="do not record this in the prompt log"),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def _sampling(temperature: float | None, top_p: float | None, max_tokens: int | None, stop: tuple[str, ...], seed: int | None) -> dict[str, Any]:
    values = {"temperature": temperature, "top_p": top_p, "max_tokens": max_tokens, "seed": seed}
    out = {k: v for k, v in values.items() if v is not None}
    if stop:
        out["stop"] = tuple(stop)
    return out


# ------------------------------------------------------------------ streaming a reply


@dataclass
class Reply:
    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    model: str | None = None
    duration_s: float = 0.0
    first_token_s: float | None = None


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


@contextlib.contextmanager
def _end_line(reply: Reply) -> Iterator[None]:
    """If a stream fails after some text, end the line so the error starts on its own."""
    try:
        yield
    except BaseException:
        if reply.text and not reply.text.endswith("\n"):
            _write("\n")
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
                    _write(delta.text)
                if delta.finish_reason is not None:
                    reply.finish_reason = delta.finish_reason
                if delta.usage is not None:
                    reply.prompt_tokens, reply.completion_tokens = delta.usage.prompt_tokens, delta.usage.completion_tokens
                reply.model = delta.model or reply.model
    else:
        done = target.backend.generate(request)
        reply.text, reply.finish_reason, reply.model = done.text, done.finish_reason, done.model
        reply.prompt_tokens, reply.completion_tokens = done.usage.prompt_tokens, done.usage.completion_tokens
        reply.first_token_s = time.perf_counter() - start
        _write(done.text)
    reply.duration_s = time.perf_counter() - start
    if not reply.text.endswith("\n"):
        _write("\n")
    return reply


def _note(reply: Reply, target: Target, verbose: bool) -> None:
    if reply.finish_reason == "length":
        click.echo("rung: the reply stopped at the token limit (--max-tokens)", err=True)
    if verbose:
        tokens = "" if reply.prompt_tokens is None else f" | {reply.prompt_tokens} prompt + {reply.completion_tokens} completion tokens"
        first = "" if reply.first_token_s is None else f" | first token {reply.first_token_s:.2f} s"
        click.echo(f"[{target.name} {reply.model or target.model}{tokens} | {reply.duration_s:.2f} s{first} | {reply.finish_reason}]", err=True)


def _log(target: Target, sampling: dict[str, Any], prompt: str, system: str | None, reply: Reply, conversation: str | None = None) -> None:
    from rung_prompt import logdb

    options = dict(target.options)
    options.update({k: list(v) if isinstance(v, tuple) else v for k, v in sampling.items()})
    logdb.record(
        backend=target.name, model=reply.model or target.model, options=options, prompt=prompt,
        response=reply.text, system=system, conversation=conversation, finish_reason=reply.finish_reason,
        prompt_tokens=reply.prompt_tokens, completion_tokens=reply.completion_tokens,
        duration_s=round(reply.duration_s, 4),
        first_token_s=None if reply.first_token_s is None else round(reply.first_token_s, 4),
    )


def _quiet_broken_pipe(func: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except BrokenPipeError:  # `rung prompt ... | head`
            sys.stderr.close()
            raise SystemExit(0) from None

    return wrapper


# ------------------------------------------------------------------ rung prompt


@click.command()
@click.argument("text", required=False)
@backend_options
@click.option("--no-stream", is_flag=True, help="wait for the whole reply instead of streaming it")
@click.option("-v", "--verbose", is_flag=True, help="print model, token usage and timing to stderr")
@_quiet_broken_pipe
def prompt(text: str | None, backend: str | None, model: str | None, config: str | None, options: tuple[str, ...],
           system: str | None, temperature: float | None, top_p: float | None, max_tokens: int | None,
           stop: tuple[str, ...], seed: int | None, no_log: bool, no_stream: bool, verbose: bool) -> None:
    """Send TEXT (or stdin, with '-' or no TEXT) to a backend; the reply streams to stdout.

    \b
    rung prompt "Name three rivers"                      (openai, $OPENAI_API_KEY)
    rung prompt -b anthropic -m claude-haiku-4-5 "Hi"
    rung prompt -o base_url=http://localhost:8000/v1 -m my-model "Hi"
    rung prompt -c run.yaml --system "Be brief" "Hi"
    """
    from rung.records import GenerationRequest, Message

    if text is None or text == "-":
        if sys.stdin.isatty():
            raise click.UsageError("give the prompt: rung prompt \"TEXT\" (or pipe it on stdin)")
        text = sys.stdin.read().rstrip("\n")
    if not text.strip():
        raise click.UsageError("the prompt is empty")
    target = build_target(backend, model, config, options)
    sampling = _sampling(temperature, top_p, max_tokens, stop, seed)
    request = GenerationRequest(messages=(Message("user", text),), system=system, **sampling)
    reply = run_request(target, request, stream=not no_stream)
    _note(reply, target, verbose)
    if not no_log:
        _log(target, sampling, text, system, reply)


# ------------------------------------------------------------------ rung chat


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
@_quiet_broken_pipe
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
    sampling = _sampling(temperature, top_p, max_tokens, stop, seed)
    tty = sys.stdin.isatty()
    conversation = uuid.uuid4().hex[:12]
    history: list[Message] = []
    if tty:
        click.echo(f"chatting with {target.name} {target.model or ''} (Ctrl-D or /exit to leave, /reset to start over)", err=True)
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
            request = GenerationRequest(messages=tuple(history), system=system, **sampling)
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
            _note(reply, target, verbose)
            if not no_log:
                _log(target, sampling, line, system, reply, conversation=conversation)
    except KeyboardInterrupt:  # Ctrl-C between replies: leave, as at the prompt
        pass
    if tty:
        click.echo("", err=True)


# ------------------------------------------------------------------ rung logs


def _clip(text: str | None, width: int) -> str:
    flat = " ".join((text or "").split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


@click.command()
@click.option("-n", "--count", default=10, show_default=True, help="how many entries")
@click.option("-q", "--query", help="only entries whose prompt, system prompt or reply contains this text")
@click.option("--full", is_flag=True, help="print whole prompts and replies")
@click.option("--json", "as_json", is_flag=True, help="print JSON lines for machines")
@click.option("--path", "show_path", is_flag=True, help="print where the log is and exit")
@_quiet_broken_pipe
def logs(count: int, query: str | None, full: bool, as_json: bool, show_path: bool) -> None:
    """List the most recent prompts and replies (oldest first), or search them with -q."""
    from rung_prompt import logdb

    if show_path:
        click.echo(str(logdb.db_path()))
        return
    entries = logdb.recent(count, query)
    if as_json:
        for entry in entries:
            click.echo(json.dumps(entry, ensure_ascii=False))
        return
    if not entries:
        click.echo("no logged prompts" + (f" containing '{query}'" if query else "") + f" in {logdb.db_path()}", err=True)
        return
    for entry in entries:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry["created"]))
        tokens = "" if entry["prompt_tokens"] is None else f"  {entry['prompt_tokens']}+{entry['completion_tokens']} tokens"
        took = "" if entry["duration_s"] is None else f"  {entry['duration_s']:.2f} s"
        chat_id = f"  chat {entry['conversation']}" if entry["conversation"] else ""
        click.echo(f"#{entry['id']}  {when}  {entry['backend']} {entry['model'] or ''}{tokens}{took}{chat_id}")
        if entry["system"]:
            click.echo(f"  system: {entry['system'] if full else _clip(entry['system'], 100)}")
        click.echo(f"  > {entry['prompt'] if full else _clip(entry['prompt'], 100)}")
        click.echo(f"  < {entry['response'] if full else _clip(entry['response'], 100)}")


# ------------------------------------------------------------------ rung keys


@click.group()
def keys() -> None:
    """Store API keys (in a file only you can read) for hosted backends.

    \b
    rung keys set openai        (asks for the key; or pipe it: ... | rung keys set openai)
    rung keys list
    rung keys remove openai

    A backend uses its api_key option first, then its environment variable
    ($OPENAI_API_KEY, $ANTHROPIC_API_KEY), then the stored key named after it.
    """


@keys.command("set")
@click.argument("name")
def keys_set(name: str) -> None:
    """Store the key NAME (read from a hidden prompt, or from stdin)."""
    from rung_prompt.keys import check_name, keys_path, set_key

    check_name(name)
    if sys.stdin.isatty():
        value = click.prompt(f"key for {name}", hide_input=True, err=True)
    else:
        value = sys.stdin.readline()
    set_key(name, value)
    click.echo(f"stored key '{name}' in {keys_path()}", err=True)


@keys.command("list")
def keys_list() -> None:
    """List stored key names (never the keys)."""
    from rung_prompt.keys import key_names, keys_path

    names = key_names()
    for name in names:
        click.echo(name)
    if not names:
        click.echo(f"no keys stored in {keys_path()}", err=True)


@keys.command("remove")
@click.argument("name")
def keys_remove(name: str) -> None:
    """Forget the key NAME."""
    from rung_prompt.keys import remove_key

    if not remove_key(name):
        raise RungError(f"no key named '{name}' is stored; see `rung keys list`")
    click.echo(f"removed key '{name}'", err=True)


@keys.command("path")
def keys_path_cmd() -> None:
    """Print where the keys are stored."""
    from rung_prompt.keys import keys_path

    click.echo(str(keys_path()))

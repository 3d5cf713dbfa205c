"""`rung prompt`: one prompt to a backend, the reply streamed to stdout."""

from __future__ import annotations

import sys

import click

from rung_prompt.options import backend_options, sampling
from rung_prompt.reply import log_reply, note, quiet_broken_pipe
from rung_prompt.structuring import schema_option, send_structured
from rung_prompt.target import build_target
from rung_prompt.templating import template_options
from rung_prompt.tooling import send, tool_options


@click.command()
@click.argument("text", required=False)
@backend_options
@template_options
@click.option("--raw", is_flag=True,
              help="continue TEXT as plain text, never through the model's chat template (local backends)")
@click.option("--no-stream", is_flag=True, help="wait for the whole reply instead of streaming it")
@click.option("-v", "--verbose", is_flag=True, help="print model, token usage and timing to stderr")
@tool_options
@schema_option
@quiet_broken_pipe
def prompt(text: str | None, backend: str | None, model: str | None, config: str | None, options: tuple[str, ...],
           system: str | None, temperature: float | None, top_p: float | None, max_tokens: int | None,
           stop: tuple[str, ...], seed: int | None, no_log: bool, template: str | None, params: tuple[str, ...],
           raw: bool, no_stream: bool, verbose: bool, tools: tuple[str, ...], max_rounds: int,
           schema: str | dict | None) -> None:
    """Send TEXT (or stdin, with '-' or no TEXT) to a backend; the reply streams to stdout.

    \b
    rung prompt "Name three rivers"                      (openai, $OPENAI_API_KEY)
    rung prompt -b anthropic -m claude-haiku-4-5 "Hi"
    rung prompt -o base_url=http://localhost:8000/v1 -m my-model "Hi"
    rung prompt -c run.yaml --system "Be brief" "Hi"
    rung prompt -b torch -m runs/stdlib/model --raw "def fibonacci(n):"
    rung prompt -t summarise -p words=5 "TEXT"          (a template: rung templates list)
    rung prompt --tool mytools:get_weather "Weather in Oslo?"   (the model may call it)
    rung prompt -b torch -m runs/sft/model --schema person.json "Describe Ada"   (JSON of the schema)
    """
    from rung.records import GenerationRequest, Message

    if template is not None or params:
        from rung_prompt import templating

        prepared = templating.prepare(template, params, text, system, raw, (backend, model, config, options),
                                      sampling(temperature, top_p, max_tokens, stop, seed))
        target, request, text, system = prepared.target, prepared.request, prepared.prompt, prepared.system
        logged, tools = prepared.logged_settings, (*prepared.tools, *tools)
        schema = schema if schema is not None else prepared.schema
    else:
        if text is None or text == "-":
            if sys.stdin.isatty():
                raise click.UsageError("give the prompt: rung prompt \"TEXT\" (or pipe it on stdin)")
            text = sys.stdin.read().rstrip("\n")
        if not text.strip():
            raise click.UsageError("the prompt is empty")
        if raw and system is not None:
            raise click.UsageError("--raw continues TEXT as plain text, so there is no turn for --system; "
                                   "drop one of them")
        target = build_target(backend, model, config, options)
        settings = sampling(temperature, top_p, max_tokens, stop, seed)
        if raw:
            request = GenerationRequest(prompt=text, raw=True, **settings)
        else:  # a user turn: a chat model answers it through its template
            request = GenerationRequest(messages=(Message("user", text),), system=system, **settings)
        logged = {**settings, "raw": True} if raw else settings
    if schema is not None and tools:
        raise click.UsageError("--schema asks for JSON, --tool for calls: drop one of them")
    if schema is not None:
        reply = send_structured(target, request, schema)
    else:
        reply = send(target, request, tools, max_rounds, stream=not no_stream)
    note(reply, target, verbose)
    if not no_log:
        log_reply(target, logged, text, system, reply)

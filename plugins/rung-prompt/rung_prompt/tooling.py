"""`rung prompt --tool MODULE:FUNCTION`: the prompt answered through rung.tools' call loop.

Each call the model asks for is run here, said on stderr as it happens
(``rung: tool add {"a": 2} -> 5``), and recorded with its result in the prompt log; the final
answer is printed whole (a tool round is not streamed).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import click

from rung_prompt.reply import Reply, run_request, write
from rung_prompt.target import Target


def tool_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--tool (repeatable) and --max-rounds."""
    func = click.option("--max-rounds", type=click.IntRange(min=0), default=5, show_default=True,
                        help="most rounds of tool calls before the model must answer (with --tool)")(func)
    return click.option("--tool", "tools", multiple=True, metavar="MODULE:FUNCTION",
                        help="a Python function the model may call, e.g. --tool mytools:get_weather or "
                             "--tool tools.py:add (repeatable); its signature and docstring describe it")(func)


def _clip(text: str, width: int = 160) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def send(target: Target, request: Any, tools: tuple[str, ...], max_rounds: int, stream: bool) -> Reply:
    """The reply to `request`: streamed as usual without tools, through the call loop with them."""
    if not tools:
        return run_request(target, request, stream=stream)
    from rung.tools import ToolResult, load_tool, run_tools

    if request.raw:
        raise click.UsageError("--raw continues plain text; tools (--tool) need a chat turn: drop one of them")
    loaded = [load_tool(reference) for reference in tools]
    reply = Reply()

    def said(result: ToolResult) -> None:
        reply.tool_calls.append(result.as_dict())
        mark = " (error)" if result.is_error else ""
        click.echo(f"rung: tool {result.call.name} {_clip(result.call.arguments, 120)} -> "
                   f"{_clip(result.output)}{mark}", err=True)

    start = time.perf_counter()
    done = run_tools(target.backend, request, loaded, max_rounds=max_rounds, on_result=said)
    reply.duration_s = reply.first_token_s = time.perf_counter() - start
    reply.text, reply.finish_reason, reply.model = done.text, done.finish_reason, done.model
    reply.prompt_tokens, reply.completion_tokens = done.usage.prompt_tokens, done.usage.completion_tokens
    write(done.text if done.text.endswith("\n") else done.text + "\n")
    return reply

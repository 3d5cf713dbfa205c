"""`rung logs`: the most recent prompts and replies of the prompt log, or a search of them."""

from __future__ import annotations

import json
import time

import click

from rung_prompt.reply import quiet_broken_pipe


def _clip(text: str | None, width: int) -> str:
    flat = " ".join((text or "").split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


@click.command()
@click.option("-n", "--count", default=10, show_default=True, help="how many entries")
@click.option("-q", "--query", help="only entries whose prompt, system prompt, reply or tool calls contain this text")
@click.option("--full", is_flag=True, help="print whole prompts and replies")
@click.option("--json", "as_json", is_flag=True, help="print JSON lines for machines")
@click.option("--path", "show_path", is_flag=True, help="print where the log is and exit")
@quiet_broken_pipe
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
        click.echo(
            "no logged prompts" + (f" containing '{query}'" if query else "") + f" in {logdb.db_path()}", err=True
        )
        return
    for entry in entries:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry["created"]))
        tokens = (
            "" if entry["prompt_tokens"] is None else f"  {entry['prompt_tokens']}+{entry['completion_tokens']} tokens"
        )
        took = "" if entry["duration_s"] is None else f"  {entry['duration_s']:.2f} s"
        chat_id = f"  chat {entry['conversation']}" if entry["conversation"] else ""
        click.echo(f"#{entry['id']}  {when}  {entry['backend']} {entry['model'] or ''}{tokens}{took}{chat_id}")
        if entry["system"]:
            click.echo(f"  system: {entry['system'] if full else _clip(entry['system'], 100)}")
        click.echo(f"  > {entry['prompt'] if full else _clip(entry['prompt'], 100)}")
        for call in entry.get("tool_calls") or ():  # `rung prompt --tool`: each call and its result
            mark = " (error)" if call.get("is_error") else ""
            arguments, output = str(call.get("arguments", "")), str(call.get("output", ""))
            click.echo(f"  tool {call.get('name')} {arguments if full else _clip(arguments, 60)} -> "
                       f"{output if full else _clip(output, 60)}{mark}")
        click.echo(f"  < {entry['response'] if full else _clip(entry['response'], 100)}")

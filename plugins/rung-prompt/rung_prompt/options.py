"""The command-line options `prompt` and `chat` share, and the sampling settings they give.

`--min-p`, `--repetition-penalty` and `--token-healing` are kept on the click context (not
passed to the commands): `sampling()` adds them to the request's settings; a value out of
range is the request's own one-line error (`rung.records.check_sampling_values`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from rung_prompt.target import DEFAULT_BACKEND


_KEPT = "rung_prompt.sampling"


def _keep(name: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    """A callback that keeps an option's value (when given) for `sampling()`."""
    def keep(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        if value is not None:
            ctx.meta.setdefault(_KEPT, {})[name] = value
    return keep


def backend_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The options `prompt` and `chat` share."""
    decorators = [
        click.option("-b", "--backend", help=f"backend name (default: {DEFAULT_BACKEND}, or the config's)"),
        click.option("-m", "--model", help="model name, e.g. gpt-4o-mini"),
        click.option("-c", "--config", type=click.Path(dir_okay=False),
                     help="take the backend section of this run config"),
        click.option("-o", "--option", "options", multiple=True, metavar="KEY=VALUE",
                     help="backend option, e.g. -o base_url=http://localhost:8000/v1 (repeatable)"),
        click.option("-s", "--system", help="system prompt"),
        click.option("--temperature", type=float, help="sampling temperature"),  # -t is --template
        click.option("--top-p", type=float, help="nucleus sampling probability"),
        click.option("--max-tokens", type=int, help="most tokens to generate"),
        click.option("--stop", multiple=True, help="stop sequence (repeatable)"),
        click.option("--seed", type=int, help="sampling seed, where the backend has one"),
        click.option("--min-p", type=float, expose_value=False, callback=_keep("min_p"),
                     help="keep tokens at least this share of the most likely one's probability (0-1)"),
        click.option("--repetition-penalty", type=float, expose_value=False, callback=_keep("repetition_penalty"),
                     help="penalize ids already in the prompt or reply (1: off; 1.1-1.3 against loops)"),
        click.option("--token-healing/--no-token-healing", default=None, expose_value=False,
                     callback=_keep("token_healing"),
                     help="back a prompt ending mid-word or in a space up by a token (local backends, --raw)"),
        click.option("--no-log", is_flag=True, help="do not record this in the prompt log"),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def sampling(
    temperature: float | None, top_p: float | None, max_tokens: int | None, stop: tuple[str, ...], seed: int | None
) -> dict[str, Any]:
    """The `GenerationRequest` fields the options set (unset ones stay the backend's default)."""
    values = {"temperature": temperature, "top_p": top_p, "max_tokens": max_tokens, "seed": seed}
    out = {k: v for k, v in values.items() if v is not None}
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        out.update(ctx.meta.get(_KEPT, {}))
    if stop:
        out["stop"] = tuple(stop)
    return out

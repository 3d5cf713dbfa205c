"""`rung run`: build the backend, tokenizer, data and trainer from a config and train."""

from __future__ import annotations

import click


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("path", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
def run(path: str, overrides: tuple[str, ...]) -> None:
    """Run CONFIG, with optional KEY.PATH=VALUE overrides (e.g. trainer.steps=100)."""
    from rung.api import run as run_api
    from rung.console import get_console

    result = run_api(path, overrides)
    summary = f"done: {result.steps} steps"
    if result.final_loss is not None:
        summary += f", final loss {result.final_loss:.4f}"
    get_console().print(f"{summary}; outputs in {result.output_dir}", highlight=False)

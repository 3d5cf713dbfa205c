"""`rung run`: build the backend, tokenizer, data and trainer from a config and train; a config
with `stages:` runs its stages in order (`rung.stages`)."""

from __future__ import annotations

import click


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("path", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
@click.option("--from", "start", metavar="STAGE", help="a staged config: rerun this stage and every later one")
@click.option("--only", metavar="STAGE", help="a staged config: run only this stage (a serve stage then serves)")
def run(path: str, overrides: tuple[str, ...], start: str | None, only: str | None) -> None:
    """Run CONFIG, with optional KEY.PATH=VALUE overrides (e.g. trainer.steps=100).

    \b
    A config with `stages:` runs them in order, skipping those finished and unchanged:
    rung run ladder.yaml                       every stage; the summary table at the end
    rung run ladder.yaml --from sft            rerun sft and everything after it
    rung run ladder.yaml stages.sft.trainer.steps=50 --only sft
    """
    from rung.console import get_console
    from rung.stages import is_staged

    if is_staged(path):
        from rung.stages.plan import load_plan
        from rung.stages.runner import run_plan

        run_plan(load_plan(path, overrides), start=start, only=only)
        return
    if start or only:
        raise click.UsageError(f"--{'from' if start else 'only'} is for a config with `stages:`; {path} has none")
    from rung.api import run as run_api

    result = run_api(path, overrides)
    summary = f"done: {result.steps} steps"
    if result.final_loss is not None:
        summary += f", final loss {result.final_loss:.4f}"
    get_console().print(f"{summary}; outputs in {result.output_dir}", highlight=False)

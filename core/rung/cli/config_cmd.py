"""`rung config`: check configs and print the JSON Schema of every installed plugin's options."""

from __future__ import annotations

import json

import click


@click.group()
def config() -> None:
    """Validate configs and print their JSON Schema."""


@config.command()
def schema() -> None:
    """Print the JSON Schema of run configs (every installed plugin's options)."""
    from rung.config import json_schema
    from rung.plugins import get_plugins

    click.echo(json.dumps(json_schema(get_plugins().registry), indent=2))


@config.command()
@click.argument("path", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
def validate(path: str, overrides: tuple[str, ...]) -> None:
    """Check a config file (and KEY.PATH=VALUE overrides) without running it.

    A config with `stages:` has every stage checked, the paths earlier stages will write
    counting as present."""
    from rung.config import load_config
    from rung.stages import is_staged

    if is_staged(path):
        from rung.stages.plan import load_plan

        plan = load_plan(path, overrides)
        click.echo(f"{path}: valid ({len(plan.stages)} stages: {', '.join(s.name for s in plan.stages)})")
        return
    load_config(path, overrides)
    click.echo(f"{path}: valid")


@config.command()
@click.argument("path", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
def show(path: str, overrides: tuple[str, ...]) -> None:
    """Print a config with every default filled in (secrets left out); a config with `stages:`,
    every stage as it will run."""
    from rung.config import config_to_yaml, load_config
    from rung.stages import is_staged, load_plan, plan_to_yaml

    if is_staged(path):
        click.echo(plan_to_yaml(load_plan(path, overrides)), nl=False)
        return
    click.echo(config_to_yaml(load_config(path, overrides)), nl=False)

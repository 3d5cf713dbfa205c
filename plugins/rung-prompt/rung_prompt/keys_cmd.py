"""`rung keys`: put API keys in the key store (`rung.keys`) that hosted backends read."""

from __future__ import annotations

import sys

import click

from rung.errors import RungError


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
    from rung.keys import check_name, keys_path, set_key

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
    from rung.keys import key_names, keys_path

    names = key_names()
    for name in names:
        click.echo(name)
    if not names:
        click.echo(f"no keys stored in {keys_path()}", err=True)


@keys.command("remove")
@click.argument("name")
def keys_remove(name: str) -> None:
    """Forget the key NAME."""
    from rung.keys import remove_key

    if not remove_key(name):
        raise RungError(f"no key named '{name}' is stored; see `rung keys list`")
    click.echo(f"removed key '{name}'", err=True)


@keys.command("path")
def keys_path_cmd() -> None:
    """Print where the keys are stored."""
    from rung.keys import keys_path

    click.echo(str(keys_path()))

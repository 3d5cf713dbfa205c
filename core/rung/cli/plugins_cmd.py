"""`rung plugins`: what is installed, its version, and what it registered."""

from __future__ import annotations

import json

import click

from rung.hookspecs import REGISTRATION_HOOKS


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
def plugins(as_json: bool) -> None:
    """List installed plugins and what each registered."""
    from rung.plugins import get_plugins

    found = get_plugins()
    rows = []
    for info in found.loaded:
        registered: dict[str, list[str]] = {}
        for d in info.registered:
            registered.setdefault(d.kind, []).append(d.name)
        rows.append({"name": info.name, "version": info.version, "module": info.module, "registered": registered})
    if as_json:
        click.echo(json.dumps({"plugins": rows, "warnings": found.warnings}, indent=2))
        return
    from rich.table import Table

    from rung.console import get_console

    table = Table("plugin", "version", "registered", box=None, pad_edge=False)
    for row in rows:
        what = "; ".join(
            f"{kind.replace('_', ' ')}s: {', '.join(sorted(names))}"
            for kind in REGISTRATION_HOOKS
            if (names := row["registered"].get(kind))
        )
        table.add_row(row["name"], row["version"], what or "-")
    from rich.console import Console

    Console(soft_wrap=False).print(table)

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
    table = [("plugin", "version", "registered")]
    for row in rows:
        what = "; ".join(
            f"{kind.replace('_', ' ')}s: {', '.join(sorted(names))}"
            for kind in REGISTRATION_HOOKS
            if (names := row["registered"].get(kind))
        )
        table.append((row["name"], row["version"], what or "-"))
    # Plain columns, not rich: this command must start fast with every plugin installed.
    widths = [max(len(line[i]) for line in table) for i in range(2)]
    for name, version, what in table:
        click.echo(f"{name:<{widths[0]}}  {version:<{widths[1]}}  {what}")

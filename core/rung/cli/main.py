"""The `rung` entry point: a click group whose commands come from plugins, imported lazily.

`rung --help` lists every command from the descriptors plugins registered, so it imports
no command module (and nothing heavy) to print itself.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from rung import __version__
from rung.errors import RungError


class PluginCommands(click.Group):
    """Commands registered through the `rung_register_commands` hook."""

    def _descriptors(self) -> dict[str, Any]:
        from rung.plugins import get_plugins

        return get_plugins().registry.items["command"]

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(self._descriptors())

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        descriptor = self._descriptors().get(name)
        if descriptor is None:
            return None
        return descriptor.load()

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, d.summary) for name, d in sorted(self._descriptors().items())]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def resolve_command(self, ctx: click.Context, args: list[str]) -> Any:
        name = args[0] if args else ""
        if name and not name.startswith("-") and name not in self._descriptors():
            import difflib

            close = difflib.get_close_matches(name, list(self._descriptors()), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise click.UsageError(f"no command '{name}'{hint}; see 'rung --help'", ctx)
        return super().resolve_command(ctx, args)


@click.group(cls=PluginCommands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="rung")
def cli() -> None:
    """rung: prompt, fine-tune, or build a language model, from one config.

    \b
    rung plugins                      what is installed
    rung run CONFIG [key.path=value]  train as the config says
    rung config validate CONFIG       check a config without running it
    """


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; a RungError becomes one line on stderr and its exit code, no traceback."""
    try:
        cli.main(args=argv, prog_name="rung", standalone_mode=False)
    except RungError as exc:
        if os.environ.get("RUNG_DEBUG"):
            raise
        click.echo(f"rung: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("rung: aborted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("rung: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    sys.exit(0)


if __name__ == "__main__":
    main()

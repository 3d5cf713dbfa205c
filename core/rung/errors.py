"""Errors a user can act on: the CLI prints them as one line, with no traceback."""

from __future__ import annotations


class RungError(Exception):
    """A problem with the user's input or environment, said in one line.

    `exit_code` is what the CLI exits with: 2 for bad input (config, options), 1 otherwise.
    """

    exit_code = 1


class ConfigError(RungError):
    """The config or an override is invalid; the message names the file and dotted path."""

    exit_code = 2


class PluginError(RungError):
    """A plugin could not be found, loaded or used."""

    exit_code = 2


def excerpt(value: object, limit: int = 60) -> str:
    """`repr(value)` cut to about `limit` characters, saying how long it was: what an error may
    quote of a user's value (a megabyte-long string is never echoed whole)."""
    shown = repr(value)
    if len(shown) <= limit:
        return shown
    size = f"{len(value)} characters" if isinstance(value, str) else f"{len(shown)} characters as text"
    return f"{shown[:limit]}... ({size})"

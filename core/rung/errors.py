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

"""Registration only: the `compare` command (imported on use)."""

from __future__ import annotations

from rung.hookspecs import hookimpl


@hookimpl
def rung_register_commands(register):
    register("compare", impl="rung_compare.cli:compare",
             summary="Compare prompts x backends on test cases with assertions (table, JSON, HTML report).")

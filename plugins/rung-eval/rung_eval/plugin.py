"""Registration of rung-eval's pieces: light, imports nothing heavy."""

from __future__ import annotations

from rung.hookspecs import hookimpl


@hookimpl
def rung_register_eval_tasks(register):
    pass  # perplexity, multiple_choice, generation: registered as they land


@hookimpl
def rung_register_commands(register):
    pass  # eval

"""Registration only: the `prompt`, `chat`, `logs`, `keys` and `templates` commands (imported on use)."""

from __future__ import annotations

from rung.hookspecs import hookimpl


@hookimpl
def rung_register_commands(register):
    register("prompt", impl="rung_prompt.prompt_cmd:prompt",
             summary="Send one prompt to a backend and stream the reply.")
    register("chat", impl="rung_prompt.chat_cmd:chat", summary="Chat with a backend in the terminal (Ctrl-D to leave).")
    register("logs", impl="rung_prompt.logs_cmd:logs", summary="List or search the logged prompts and replies.")
    register("keys", impl="rung_prompt.keys_cmd:keys",
             summary="Store API keys for hosted backends (rung keys set openai).")
    register("templates", impl="rung_prompt.templates_cmd:templates",
             summary="List, show, render and edit prompt templates (rung prompt -t NAME).")

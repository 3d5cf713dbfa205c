"""What `rung prompt` and `rung chat` do with a prompt template: `-t NAME` and `-p VAR=VALUE`.

The template's backend, model, backend options and sampling are defaults: whatever the
command line says wins, and with `-c CONFIG` the config's backend section is used as it is.
"""

from __future__ import annotations

import difflib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import click

from rung.errors import ConfigError


def template_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """`-t/--template NAME` and `-p/--param VAR=VALUE`, for `prompt` and `chat`."""
    func = click.option("-p", "--param", "params", multiple=True, metavar="VAR=VALUE",
                        help="a template variable (repeatable)")(func)
    return click.option("-t", "--template", metavar="NAME",
                        help="a prompt template: a name in `rung templates list`, or a YAML file")(func)


def parse_params(params: tuple[str, ...]) -> dict[str, str]:
    """`-p VAR=VALUE` pairs as a mapping (the value is text, taken as it is)."""
    values: dict[str, str] = {}
    for item in params:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise click.UsageError(f"-p {item}: expected VAR=VALUE, e.g. -p topic=rivers")
        values[name.strip()] = value
    return values


def load(template: str | None, params: tuple[str, ...]) -> tuple[Any, dict[str, str]]:
    """The template (None without `-t`) and the `-p` variables, each checked against it."""
    variables = parse_params(params)
    if template is None:
        if variables:
            raise click.UsageError("-p sets a template's variables; name the template with -t NAME")
        return None, variables
    from rung.prompt_templates import load_template

    loaded = load_template(template)
    known = loaded.variable_names
    for name in variables:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean '{close[0]}'?" if close else (
                f"its variables: {', '.join(known)}" if known else "it has no variables")
            raise click.UsageError(f"-p {name}: template '{loaded.name}' has no variable '{name}'; {hint}")
    return loaded, variables


def backend_defaults(template: Any, backend: str | None, model: str | None, config: str | None,
                     options: tuple[str, ...]) -> tuple[str | None, str | None, tuple[str, ...]]:
    """The `-b`, `-m`, `-o` to build the backend with: the template's, under the command line's.

    With `-c` the config decides the backend. The template's model and options belong to its
    backend, so a `-b` naming another backend drops them."""
    if template is None or config is not None:
        return backend, model, options
    name = backend or template.backend
    if template.backend is not None and name != template.backend:
        return name, model, options
    defaults = tuple(f"{key}={json.dumps(value)}" for key, value in template.options.items())  # JSON is YAML
    return name, model or template.model, defaults + options


def sampling_defaults(template: Any, settings: dict[str, Any]) -> dict[str, Any]:
    """The request's sampling: the template's, with the command line's over them."""
    return settings if template is None else {**template.sampling, **settings}


def render(template: Any, render_call: Callable[[], Any]) -> Any:
    """`render_call()`, its missing-variable error told as the command line fixes it."""
    from rung.prompt_templates import INPUT, MissingVariableError

    try:
        return render_call()
    except MissingVariableError as exc:
        if INPUT in exc.names:
            raise ConfigError(f"{exc}; give the text as an argument or on stdin") from None
        raise ConfigError(f"{exc}; give it with " + " ".join(f"-p {n}=VALUE" for n in exc.names)) from None


def logged_settings(template: Any, settings: dict[str, Any]) -> dict[str, Any]:
    """What the log records with the request's sampling: the template's name too."""
    return settings if template is None else {**settings, "template": template.name}


@dataclass
class Prepared:
    """`rung prompt -t`'s request, the backend to send it to, and what the log records."""

    target: Any
    request: Any
    prompt: str  # the rendered user turn
    system: str | None  # the system message sent
    logged_settings: dict[str, Any]
    tools: tuple[str, ...]  # the template's
    schema: dict[str, Any] | None  # the template's


def prepare(template: str | None, params: tuple[str, ...], text: str | None, system: str | None, raw: bool,
            backend_args: tuple[Any, Any, Any, tuple[str, ...]], settings: dict[str, Any]) -> Prepared:
    """`rung prompt -t NAME -p ... [TEXT]`: TEXT (or stdin) is the `input` variable; the template
    is checked and rendered before the backend is built (a mistake costs no SDK import)."""
    from rung.prompt_templates import INPUT
    from rung_prompt.target import build_target

    loaded, variables = load(template, params)
    if raw:
        raise click.UsageError("--raw continues plain text; a template (-t) builds chat turns: drop one of them")
    if text == "-" or (text is None and loaded.takes_input and INPUT not in variables and not sys.stdin.isatty()):
        text = sys.stdin.read().rstrip("\n") or None  # nothing piped in: no text
    if text is not None:
        if not loaded.takes_input:
            raise click.UsageError(f"template '{loaded.name}' takes no text (its prompt has no {{{{ input }}}}); "
                                   f"give its variables with -p VAR=VALUE")
        variables[INPUT] = text
    request = render(loaded, lambda: loaded.render(variables, system=system, **settings))
    backend, model, config, options = backend_args
    backend, model, options = backend_defaults(loaded, backend, model, config, options)
    target = build_target(backend, model, config, options)
    sent_system = next((m.content for m in request.messages if m.role == "system"), None)
    return Prepared(target, request, request.messages[-1].content, sent_system,
                    logged_settings(loaded, sampling_defaults(loaded, settings)), loaded.tools,
                    None if loaded.schema is None else dict(loaded.schema))

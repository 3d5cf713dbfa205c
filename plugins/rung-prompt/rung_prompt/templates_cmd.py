"""`rung templates`: list, show, render, edit and locate prompt templates (rung.prompt_templates)."""

from __future__ import annotations

import json

import click

from rung.errors import ConfigError


@click.group()
def templates() -> None:
    """Prompt templates: YAML files in the templates folder of rung's config directory.

    \b
    rung templates list                 (name and description of each)
    rung templates show NAME            (the file as written)
    rung templates render NAME -p k=v   (the messages it sends, as JSON)
    rung templates edit NAME            ($EDITOR; a new name starts from a starter file)
    rung templates path [NAME]          (the folder, or the template's file)

    Use one with `rung prompt -t NAME -p VAR=VALUE` or `rung chat -t NAME`.
    """


@templates.command("list")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per template: name, path, description")
def templates_list(as_json: bool) -> None:
    """List the templates in the templates folder."""
    from rung.prompt_templates import list_templates, load_template, templates_dir

    found = list_templates()
    if not found:
        click.echo(f"no templates in {templates_dir()} (rung templates edit NAME makes one)", err=True)
        return
    width = max(len(name) for name, _ in found)
    for name, path in found:
        try:
            description = load_template(path).description
        except ConfigError as exc:  # one bad file does not hide the others
            description, problem = "", str(exc)
        else:
            problem = None
        if as_json:
            entry = {"name": name, "path": str(path), "description": description}
            click.echo(json.dumps({**entry, "error": problem} if problem else entry))
        else:
            click.echo(f"{name:<{width}}  {f'(invalid: {problem})' if problem else description}".rstrip())


@templates.command("show")
@click.argument("name")
def templates_show(name: str) -> None:
    """Print the template NAME (or file) as written, after checking it."""
    from rung.prompt_templates import load_template

    template = load_template(name)
    click.echo(template.text, nl=not template.text.endswith("\n"))
    click.echo(f"# {template.path}", err=True)


@templates.command("render")
@click.argument("name")
@click.argument("text", required=False)
@click.option("-p", "--param", "params", multiple=True, metavar="VAR=VALUE", help="a template variable (repeatable)")
def templates_render(name: str, text: str | None, params: tuple[str, ...]) -> None:
    """Print what `rung prompt -t NAME` would send (messages and sampling) as JSON, sending nothing."""
    from rung_prompt import templating

    loaded, variables = templating.load(name, params)
    if text is not None:
        variables["input"] = text
    request = templating.render(loaded, lambda: loaded.render(variables))
    out = {"messages": [{"role": m.role, "content": m.content} for m in request.messages]}
    out.update({k: list(v) if isinstance(v, tuple) else v for k, v in loaded.sampling.items()})
    for key in ("backend", "model"):
        if getattr(loaded, key) is not None:
            out[key] = getattr(loaded, key)
    click.echo(json.dumps(out, indent=2, ensure_ascii=False))


@templates.command("edit")
@click.argument("name")
def templates_edit(name: str) -> None:
    """Open the template NAME in $EDITOR, creating it from a starter if it is new; then check it."""
    from rung.paths import ensure_config_dir
    from rung.prompt_templates import NAME_PATTERN, SUFFIXES, load_template, starter_template, templates_dir

    if not NAME_PATTERN.match(name):
        raise ConfigError(f"{name!r}: a template name has letters, digits, '_', '-' and '.' (no slashes)")
    folder = templates_dir()
    path = next((folder / f"{name}{s}" for s in SUFFIXES if (folder / f"{name}{s}").is_file()), None)
    if path is None:
        ensure_config_dir()
        folder.mkdir(mode=0o700, exist_ok=True)
        path = folder / f"{name}.yaml"
        path.write_text(starter_template(name), encoding="utf-8")
        click.echo(f"created {path} from the starter template", err=True)
    click.edit(filename=str(path))
    load_template(path)  # a mistake is one line (file:line) and a non-zero exit; the file is kept
    click.echo(f"template '{name}' is valid: {path}", err=True)


@templates.command("path")
@click.argument("name", required=False)
def templates_path(name: str | None) -> None:
    """Print the templates folder, or the file of the template NAME."""
    from rung.prompt_templates import template_path, templates_dir

    click.echo(str(template_path(name) if name else templates_dir()))

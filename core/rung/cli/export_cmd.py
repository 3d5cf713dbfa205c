"""`rung export`: write a model in another format (the formats plugins registered)."""

from __future__ import annotations

import click


def _options(pairs: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.UsageError(f"'{pair}' is not key=value (a format option, e.g. outtype=q8_0)")
        out[key.strip()] = value
    return out


@click.command(context_settings={"ignore_unknown_options": False})
@click.argument("source", type=click.Path(exists=False))
@click.argument("output", required=False)
@click.argument("options", nargs=-1)
@click.option("--format", "-f", "format_", default="safetensors", show_default=True,
              help="export format (`rung plugins` lists them: safetensors, gguf, ...)")
def export(source: str, output: str | None, options: tuple[str, ...], format_: str) -> None:
    """Write the model or LoRA adapter at SOURCE to OUTPUT in another format.

    \b
    rung export runs/lora/adapter                          # merged plain model beside it
    rung export runs/pretrain/model model.gguf -f gguf outtype=q8_0
    OPTIONS are the format's own, as key=value (see `rung plugins`); OUTPUT defaults to the
    format's place beside SOURCE.
    """
    from rung.exporting import export as run_export

    if output is not None and "=" in output:  # `rung export SRC key=value`: no OUTPUT given
        options, output = (output, *options), None
    written = run_export(format_, source, output, _options(options))
    click.echo(f"exported {source} as {format_}: {written}")

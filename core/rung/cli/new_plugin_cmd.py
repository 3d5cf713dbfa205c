"""`rung new-plugin`: write a pip-installable plugin package whose tests pass at once.

The package is made from the templates under `rung/templates/new_plugin/` (package data of the
core): `common/` for every kind (pyproject with the `rung` entry point, the package's
`__init__`), then the kind's own folder (its `plugin.py`, the implementation with its Options
model, a README and tests). In template paths `package` stands for the package folder
(`rung_NAME`) and `.tmpl` is dropped; contents are `string.Template`s (`${name}`, `$$` for a
dollar sign). The package is written to a temporary folder beside the target and renamed into
place, so an error leaves nothing half-written, and an existing folder is never overwritten.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import click

from rung.errors import RungError

NAME_PATTERN = re.compile(r"[a-z][a-z0-9]*(-[a-z0-9]+)*")
MAX_NAME_LENGTH = 24


@dataclass(frozen=True)
class Kind:
    """One kind of thing a new plugin registers: its registry kind and what the package holds."""

    registry_kind: str  # the kind in rung.hookspecs.REGISTRATION_HOOKS
    module: str  # the implementation module of the package
    summary: str  # the package's description; `{name}` is the plugin's name
    dependencies: tuple[str, ...] = ()  # beyond rung itself


KINDS: dict[str, Kind] = {
    "backend": Kind("backend", "backend", "rung backend '{name}': a toy model that decodes through rung.decoding"),
    "trainer": Kind("trainer", "trainer", "rung trainer '{name}': next-token training on the run's data",
                    dependencies=("numpy>=1.24",)),
    "tokenizer": Kind("tokenizer", "tokenizer", "rung tokenizer '{name}': byte-level, with special tokens"),
    "data": Kind("data_source", "data", "rung data source '{name}': documents from a text file"),
    "sink": Kind("metric_sink", "sink", "rung metric sink '{name}': metrics as CSV rows in the run folder"),
}


def templates_root() -> Path:
    """The folder of the package templates, inside the installed core."""
    from importlib.resources import files

    return Path(str(files("rung") / "templates" / "new_plugin"))


def check_name(name: str) -> None:
    """A plugin name is lowercase words joined by hyphens: `rung-NAME` and `rung_NAME` follow."""
    if name.startswith("rung-") or name.startswith("rung_"):
        raise RungError(f"plugin name '{name}': give it without the 'rung-' prefix "
                        f"('rung new-plugin {name[5:]}' writes rung-{name[5:]}/)")
    if len(name) > MAX_NAME_LENGTH or not NAME_PATTERN.fullmatch(name):
        raise RungError(f"plugin name '{name}': use lowercase letters, digits and single hyphens, starting with "
                        f"a letter, at most {MAX_NAME_LENGTH} characters (e.g. my-echo)")


def check_not_installed(name: str, kind: Kind) -> None:
    """Refuse a name an installed plugin already uses: installing the new package would clash."""
    from importlib.metadata import PackageNotFoundError, distribution

    from rung.plugins import get_plugins

    try:
        installed = distribution(f"rung-{name}")
    except PackageNotFoundError:
        pass
    else:
        raise RungError(f"plugin name '{name}': the distribution rung-{name} {installed.version} is already "
                        "installed; pick another name")
    existing = get_plugins().registry.items[kind.registry_kind].get(name)
    if existing is not None:
        label = kind.registry_kind.replace("_", " ")
        raise RungError(f"plugin name '{name}': {existing.plugin} already registers a {label} '{name}'; "
                        "pick another name")


def substitutions(name: str, kind: str) -> dict[str, str]:
    """What the templates' `${...}` placeholders stand for."""
    from rung import __version__

    return {
        "name": name,  # the registered thing's name, as configs write it
        "dist": f"rung-{name}",
        "package": "rung_" + name.replace("-", "_"),
        "class_prefix": "".join(part.capitalize() for part in name.split("-")),
        "kind": kind,
        "summary": KINDS[kind].summary.format(name=name),
        # the rung it was written for, or newer: the templates use this version's API
        "dependencies": ", ".join(f'"{d}"' for d in (f"rung>={__version__}", *KINDS[kind].dependencies)),
    }


def render_package(kind: str, values: dict[str, str], destination: Path) -> list[Path]:
    """Write the package of `kind` into `destination` (which must not exist); return the files written."""
    from string import Template

    root = templates_root()
    written: list[Path] = []
    for layer in ("common", kind):
        for template in sorted(p for p in (root / layer).rglob("*") if p.is_file()):
            relative = template.relative_to(root / layer)
            parts = [values["package"] if part == "package" else part for part in relative.parts]
            parts[-1] = parts[-1].removesuffix(".tmpl")
            target = destination.joinpath(*parts)
            try:
                text = Template(template.read_text(encoding="utf-8")).substitute(values)
            except (KeyError, ValueError) as exc:  # a broken template is rung's bug: say which file
                raise RungError(f"template {template}: bad placeholder ({exc})") from None
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
            written.append(target)
    return written


def new_plugin_package(name: str, kind: str, output: Path) -> tuple[Path, list[Path]]:
    """Write `output/rung-NAME/` for a plugin registering one `kind`; return the folder and its files."""
    check_name(name)
    if kind not in KINDS:
        raise RungError(f"plugin kind '{kind}': choose one of {', '.join(KINDS)}")
    target = output / f"rung-{name}"
    if target.exists():
        raise RungError(f"{target} already exists; it is not overwritten (remove it or choose another --output)")
    check_not_installed(name, KINDS[kind])
    values = substitutions(name, kind)
    output.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".rung-{name}-", dir=output))
    try:
        files = render_package(kind, values, staging / "package")
        (staging / "package").rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target, [target / f.relative_to(staging / "package") for f in files]


@click.command("new-plugin")
@click.argument("name")
@click.option("--kind", "-k", required=True, type=click.Choice(list(KINDS)),
              help="what the plugin registers")
@click.option("--output", "-o", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              show_default=True, help="folder to write rung-NAME/ into")
def new_plugin(name: str, kind: str, output: Path) -> None:
    """Write rung-NAME/, a pip-installable plugin package registering one KIND.

    \b
    rung new-plugin parrot --kind backend      # rung-parrot/: backend 'parrot'
    pip install -e rung-parrot && pytest rung-parrot/tests
    """
    folder, files = new_plugin_package(name, kind, output)
    click.echo(f"wrote {folder}/ ({KINDS[kind].registry_kind.replace('_', ' ')} '{name}'):")
    for path in sorted(files):
        click.echo(f"  {path.relative_to(folder)}")
    click.echo(f"next: pip install -e {folder}  then  pytest {folder / 'tests'}  and  rung plugins")

"""`rung prepare CONFIG [key.path=value ...]`: make the token shards a config describes."""

from __future__ import annotations

import click


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("path", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
@click.option("--force", is_flag=True, help="redo everything even if the manifest is up to date")
@click.option("--workers", type=int, default=None, help="parallel processes (default: data.workers, else all cores)")
@click.option("--quiet", is_flag=True, help="no progress bars")
def prepare(path: str, overrides: tuple[str, ...], force: bool, workers: int | None, quiet: bool) -> None:
    """Read, clean and dedup the corpus of CONFIG, train its tokenizer, write token shards.

    \b
    rung prepare examples/pretrain_stdlib.yaml
    rung prepare CONFIG data.shards.val_fraction=0.05 --force
    """
    from rung.config import load_config
    from rung.console import get_console

    from rung_pretrain.pipeline import prepare as run_prepare
    from rung_pretrain.cleaning_report import format_report

    console = get_console()
    config = load_config(path, overrides)
    data = run_prepare(config, force=force, progress=not quiet, workers=workers)
    manifest = data.manifest
    if data.skipped:
        console.print(f"up to date: {data.dir}/manifest.json matches the config and sources (--force redoes it)",
                      highlight=False)
    else:
        console.print(format_report(data.report))
    tok = manifest["tokenizer"]
    train, val = manifest["splits"]["train"], manifest["splits"]["validation"]
    seconds = manifest.get("seconds")
    mb = manifest.get("bytes", 0) / 1e6
    speed = f" in {seconds:.1f} s ({mb / seconds:.1f} MB/s)" if seconds and not data.skipped else ""
    console.print(
        f"{manifest['documents']:,} documents, {mb:.1f} MB{speed}; tokenizer {tok['class']} "
        f"(vocab {tok['vocab_size']:,}); train {train['tokens']:,} tokens in {len(train['files'])} shard(s), "
        f"validation {val['tokens']:,} tokens; shards in {data.dir}",
        highlight=False,
    )

"""`rung compare SUITE.yaml`: prompts x backends x test cases, the pass table on the terminal."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

CACHE_FOLDER = ".rung-compare-cache"  # beside the suite unless --cache-dir says where


@click.command("compare")
@click.argument("suite", type=click.Path(dir_okay=False))
@click.option("--json", "json_path", metavar="PATH", help="write every result as JSON ('-': stdout)")
@click.option("--html", "html_path", metavar="PATH", help="write a self-contained HTML report")
@click.option("--no-cache", is_flag=True, help="ask every request again (the new replies are still cached)")
@click.option("--cache-dir", type=click.Path(file_okay=False),
              help=f"where replies are cached (default: {CACHE_FOLDER}/ beside the suite)")
@click.option("--concurrency", type=click.IntRange(min=1), metavar="N",
              help="requests in flight per backend, for backends whose entry sets no concurrency")
@click.option("--exit-zero", is_flag=True, help="exit 0 even when cases fail (a comparison, not a check)")
def compare(suite: str, json_path: str | None, html_path: str | None, no_cache: bool, cache_dir: str | None,
            concurrency: int | None, exit_zero: bool) -> None:
    """Run the comparison SUITE: every prompt on every backend for every test case, each reply
    checked by the case's assertions; replies are cached, so a rerun asks only what changed.
    Exits 1 when any case failed or any request did (after writing the reports), else 0.

    \b
    rung compare suite.yaml
    rung compare suite.yaml --html report.html --json results.json
    rung compare suite.yaml --concurrency 4 --no-cache
    rung compare suite.yaml --exit-zero   # the table, whatever it says
    """
    from rich.console import Console

    from rung.console import get_console

    from rung_compare import html_report, report
    from rung_compare.cache import ReplyCache
    from rung_compare.runner import run_suite
    from rung_compare.suite import load_suite

    loaded = load_suite(suite)
    folder = Path(cache_dir) if cache_dir else Path(suite).resolve().parent / CACHE_FOLDER
    run = run_suite(loaded, ReplyCache(folder, read=not no_cache), concurrency, progress=True)
    to_stdout = json_path == "-"
    stream = sys.stderr if to_stdout else sys.stdout
    console = Console(file=stream, width=None if stream.isatty() else 160)
    for table in report.tables(run):
        console.print(table)
    failed = report.failures(run)
    if failed:
        console.print(f"first failures (of {sum(not r.passed for r in run.results)}):", style="bold")
        for line in failed:
            console.print(f"  {line}", markup=False, highlight=False)
    errors = sum(r.reply.error is not None for r in run.results)
    note = get_console()
    note.print(f"[dim]{sum(run.asked.values())} requests asked, {sum(run.cached.values())} replies from the cache "
               f"({folder}), {run.wall_s:.2f} s")
    if errors:
        note.print(f"[yellow]{errors} requests failed; their cells count them as failures (errors are not cached)")
    if json_path:
        data = json.dumps(report.to_json(run), indent=2, ensure_ascii=False, default=str)
        if to_stdout:
            click.echo(data)
        else:
            Path(json_path).write_text(data + "\n", encoding="utf-8")
    if html_path:
        html_report.write(run, Path(html_path))
        note.print(f"[dim]report: {html_path}")
    failing = sum(not r.passed for r in run.results)
    if failing and not exit_zero:  # a suite in CI (or a script) fails like a test run would
        note.print(f"{failing} of {len(run.results)} results failed", markup=False, highlight=False)
        sys.exit(1)

"""`prepare()`: sources -> cleaning -> dedup -> tokenizer training -> token shards -> manifest.

Every stage is a datatrove pipeline run by its LocalPipelineExecutor on all cores:

  1 clean      (tasks = workers) reader + filters, exact hashes, MinHash signatures
  2 buckets    (tasks = MinHash buckets) datatrove MinHash stage 2
  3 cluster    (1 task) datatrove MinHash stage 3, then rung's exact-duplicate finder
  4 dedup      (tasks = workers) the same reader + filters, dedup filter, clean corpus writer
  - the run's tokenizer is trained on the clean corpus (if it needs training)
  5 shards     (tasks = workers) tokenization into train/validation token shards
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rung.errors import ConfigError, RungError
from rung_pretrain.stages import _cpu_count, _quiet_datatrove, cleaning_stages, run_stage, shard_stage

FORMAT = 1
WORK = ".work"


# ------------------------------------------------------------------------------ result


@dataclass
class PreparedData:
    """Token shards ready to train on, with the tokenizer that made them."""

    dir: Path
    tokenizer: Any
    manifest: dict[str, Any]
    report: list[dict[str, Any]] = field(default_factory=list)
    skipped: bool = False
    sampling: str = "random"

    @property
    def train_tokens(self) -> int:
        return int(self.manifest["splits"]["train"]["tokens"])

    @property
    def validation_tokens(self) -> int:
        return int(self.manifest["splits"]["validation"]["tokens"])

    def train_batches(self, batch_size: int, seq_len: int, *, seed: int = 0, rank: int = 0,
                      world_size: int = 1, sampling: str | None = None) -> Any:
        """A `TokenBatches` stream (a `rung.interfaces.BatchStream`) over the train split."""
        from rung_pretrain.reader import TokenBatches

        return TokenBatches(self.dir, batch_size, seq_len, split="train", sampling=sampling or self.sampling,
                            seed=seed, rank=rank, world_size=world_size)

    def validation_batches(self, batch_size: int, seq_len: int, *, max_batches: int | None = None,
                           rank: int = 0, world_size: int = 1) -> list[dict[str, Any]]:
        """Fixed validation windows, the same every call (see reader.validation_batches)."""
        from rung_pretrain.reader import validation_batches

        return validation_batches(self.dir, batch_size, seq_len, max_batches=max_batches, rank=rank,
                                  world_size=world_size)

    def unigram_loss(self) -> float:
        """Nats/token of a unigram model fit on train tokens, on validation tokens."""
        from rung_pretrain.reader import unigram_loss

        return unigram_loss(self.dir)


def open_prepared(directory: str | Path, sampling: str = "random") -> PreparedData:
    """Shards written earlier by `prepare`, with their tokenizer; no config needed."""
    from rung_tokenizers import load_tokenizer

    from rung_pretrain.reader import load_manifest

    directory = Path(directory)
    manifest = load_manifest(directory)
    tokenizer = load_tokenizer(directory / manifest["tokenizer"]["dir"])
    return PreparedData(directory, tokenizer, manifest, manifest.get("report", []), skipped=True, sampling=sampling)


# ------------------------------------------------------------------------------ config


def _resolve(config_or_run: Any) -> tuple[Any, Any, Any]:
    """(run or None, config, tokenizer) from a Run, a config, a dict or a YAML path."""
    from rung.config import load_config, make_config
    from rung.runner import Run

    if isinstance(config_or_run, Run):
        return config_or_run, config_or_run.config, config_or_run.tokenizer()
    config = config_or_run
    if isinstance(config, (str, Path)):
        config = load_config(config)
    elif isinstance(config, Mapping):
        config = make_config(config)
    tokenizer = None
    if getattr(config, "tokenizer", None) is not None:
        from rung.plugins import get_plugins
        from rung.runner import build

        tokenizer = build(get_plugins(), "tokenizer", config.tokenizer)
    return None, config, tokenizer


def _data_options(config: Any) -> Any:
    data = getattr(config, "data", None)
    if data is None:
        raise ConfigError("the config has no 'data' section: nothing to prepare (add `data: {name: corpus, sources: [...]}`)")
    if data.name != "corpus":
        raise ConfigError(f"data: '{data.name}' is not a corpus; `rung prepare` needs `data.name: corpus`")
    return data


def shards_dir(config: Any) -> Path:
    """Where a config's shards go: data.shards.dir, else <output_dir>/data."""
    data = _data_options(config)
    return Path(data.shards.dir) if data.shards.dir else Path(config.output_dir) / "data"


def build_sources(options: Any, ignore: tuple[str | Path, ...] = ()) -> list[Any]:
    """The corpus's sources; folders in `ignore` (the run's outputs) are never read."""
    from rung.plugins import get_plugins
    from rung.runner import build

    plugins = get_plugins()
    sources = [build(plugins, "data_source", source) for source in options.sources]
    for source in sources:
        if hasattr(source, "ignore_dirs"):
            source.ignore_dirs = tuple(os.path.abspath(str(p)) for p in ignore)
    return sources


def _tokenizer_section(config: Any) -> dict[str, Any]:
    section = getattr(config, "tokenizer", None)
    if section is None:
        return {"name": "bpe"}
    out = section.model_dump(mode="json")
    path = out.get("path")
    if path:  # a tokenizer loaded from a file: its content counts, not its name
        file = Path(path) / "tokenizer.json" if Path(path).is_dir() else Path(path)
        out["path_sha256"] = hashlib.sha256(file.read_bytes()).hexdigest() if file.is_file() else None
    return out


def fingerprint(options: Any, sources: list[Any], tokenizer_section: dict[str, Any]) -> str:
    """What the shards depend on: options that change the output, the sources' files, the tokenizer."""
    data = options.model_dump(mode="json", exclude={"workers", "logging_dir", "sampling", "sources"})
    payload = {"format": FORMAT, "data": data, "tokenizer": tokenizer_section,
               "sources": [s.fingerprint() for s in sources]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


class _Display:
    """Rich progress bars fed by the tasks' progress files (or nothing when quiet)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._progress: Any = None

    def __enter__(self) -> _Display:
        if self.enabled:
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TransferSpeedColumn,
            )

            from rung.console import get_console

            self._progress = Progress(TextColumn("[bold]{task.description:<18}"), BarColumn(), DownloadColumn(),
                                      TransferSpeedColumn(), TimeElapsedColumn(), TextColumn("{task.fields[info]}"),
                                      console=get_console())
            self._progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def add(self, description: str, total: float | None) -> Any:
        if self._progress is None:
            return None
        return self._progress.add_task(description, total=total, info="")

    def update(self, task: Any, **fields: Any) -> None:
        if self._progress is not None and task is not None:
            self._progress.update(task, **fields)

    @contextlib.contextmanager
    def polling(self, task: Any, folder: str | None) -> Iterator[None]:
        """Update `task` from a stage's progress files while the stage runs."""
        if self._progress is None or task is None or folder is None:
            yield
            return
        from rung_pretrain.cleaning import read_progress

        stop = threading.Event()

        def poll() -> None:
            while not stop.wait(0.2):
                done, docs = read_progress(folder)
                self._progress.update(task, completed=done, info=f"{docs:,} docs")

        thread = threading.Thread(target=poll, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            done, docs = read_progress(folder)
            self._progress.update(task, completed=done, total=max(done, 1), info=f"{docs:,} docs")


def _counted(texts: Iterator[str], display: _Display, task: Any, fed: list[int]) -> Iterator[str]:
    """`texts`, counting their bytes into `fed[0]` and the progress bar."""
    last = time.monotonic()
    for text in texts:
        fed[0] += len(text.encode("utf-8"))
        if time.monotonic() - last > 0.2:
            display.update(task, completed=fed[0])
            last = time.monotonic()
        yield text


# ------------------------------------------------------------------------------ prepare


def prepare(config_or_run: Any, *, force: bool = False, progress: bool | None = None,
            workers: int | None = None) -> PreparedData:
    """Make (or reuse) the token shards and tokenizer a config's `data` section describes.

    `config_or_run`: a `rung.runner.Run` (its tokenizer is trained and handed back with
    `run.use_tokenizer`), a config object, a dict, or a YAML path. Nothing is redone when
    the folder's manifest matches the config, the sources and the tokenizer (`force=True`
    redoes it). `progress`: draw progress bars (default: when stderr is a terminal).
    """
    run, config, tokenizer = _resolve(config_or_run)
    options = _data_options(config)
    out = shards_dir(config)
    sources = build_sources(options, ignore=(out, config.output_dir))
    from rung_pretrain.sources.base import Unit

    units = [Unit(i, key, size) for i, source in enumerate(sources) for key, size in source.units()]
    tokenizer_section = _tokenizer_section(config)
    stamp = fingerprint(options, sources, tokenizer_section)
    if progress is None:
        progress = sys.stderr.isatty()

    if not force:
        reused = _reuse(out, stamp, options.sampling)
        if reused is not None:
            if run is not None:
                run.use_tokenizer(reused.tokenizer)
            return reused

    if tokenizer is None:
        tokenizer = _default_tokenizer()
    started = time.perf_counter()
    workers = workers or options.workers or _cpu_count()
    tasks = max(1, min(workers, len(units)))
    work = out / WORK
    for name in ("manifest.json", "train", "validation", "tokenizer", WORK):
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    logs = Path(options.logging_dir) if options.logging_dir else work / "logs"
    stats_files: list[Path] = []
    with _quiet_datatrove(logs / "main.log"), _Display(progress) as display:
        for index, stage in enumerate(cleaning_stages(options, sources, units, work, tasks), 1):
            task = display.add(stage.name, stage.total_bytes)
            with display.polling(task, stage.progress):
                stats_files.append(run_stage(stage, logs / f"{index}-{stage.name.replace(' ', '_').replace('+', '')}", workers))
            if task is not None and stage.progress is None:
                display.update(task, total=1, completed=1)
        from rung_pretrain.cleaning import read_clean, report_from_stats

        report = report_from_stats(stats_files)
        clean_docs = report[-1]["docs_out"] if report else 0
        clean_bytes = report[-1]["bytes_out"] if report else 0
        if clean_docs == 0:
            raise RungError(f"no documents left after reading and cleaning ({_report_line(report)}); logs in {logs}")
        trained = False
        if hasattr(tokenizer, "train") and not getattr(tokenizer, "is_trained", False):
            limit = getattr(getattr(tokenizer, "options", None), "max_training_bytes", None)
            task = display.add("train tokenizer", min(clean_bytes, limit) if limit else clean_bytes)
            fed = [0]
            tokenizer.train(_counted((text for _, text in read_clean(work / "clean")), display, task, fed))
            display.update(task, completed=fed[0], total=max(fed[0], 1))
            trained = True
        if tokenizer.eos_id is None:
            raise RungError(f"tokenizer {type(tokenizer).__name__} has no eos token: documents cannot be separated")
        tokenizer_dir = out / "tokenizer"
        tokenizer.save(tokenizer_dir)
        tokenizer_file = tokenizer_dir / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise RungError(f"tokenizer {type(tokenizer).__name__} did not save a tokenizer.json; rung-pretrain needs one")
        tokenizer_hash = hashlib.sha256(tokenizer_file.read_bytes()).hexdigest()
        stage = shard_stage(options, work, out, tokenizer_file, tokenizer, tokenizer_hash, tasks)
        task = display.add(stage.name, clean_bytes)
        with display.polling(task, stage.progress):
            stats_files.append(run_stage(stage, logs / "5-token_shards", workers))

    splits = _collect(out, options.shards.val_fraction)
    manifest = {
        "format": FORMAT,
        "fingerprint": stamp,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - started, 2),
        "workers": workers,
        "sources": [{**s.describe(), "units": sum(1 for u in units if u.source == i),
                     "bytes": sum(u.size for u in units if u.source == i)} for i, s in enumerate(sources)],
        "tokenizer": {"name": tokenizer_section.get("name"), "class": type(tokenizer).__name__,
                      "vocab_size": tokenizer.vocab_size, "eos_id": tokenizer.eos_id, "sha256": tokenizer_hash,
                      "dir": "tokenizer", "trained_here": trained, "options": tokenizer_section},
        "dtype": _dtype(tokenizer.vocab_size),
        "splits": splits,
        "documents": clean_docs,
        "bytes": clean_bytes,
        "report": report,
        "config": options.model_dump(mode="json"),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    for name in ("clean", "exact", "minhash", "progress"):
        shutil.rmtree(work / name, ignore_errors=True)
    if run is not None:
        run.use_tokenizer(tokenizer)
    return PreparedData(out, tokenizer, manifest, report, skipped=False, sampling=options.sampling)


def _default_tokenizer() -> Any:
    from rung_tokenizers.options import BPETokenizerOptions
    from rung_tokenizers.tokenizer import BPETokenizer

    return BPETokenizer(BPETokenizerOptions())


def _dtype(vocab_size: int) -> str:
    from rung_pretrain.shards import token_dtype

    return token_dtype(vocab_size).str


def _reuse(out: Path, stamp: str, sampling: str) -> PreparedData | None:
    """The shards in `out` if their manifest matches `stamp` and their files check out."""
    path = out / "manifest.json"
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return None
    if manifest.get("fingerprint") != stamp:
        return None
    from rung_pretrain.reader import TokenShards

    try:
        for split in ("train", "validation"):
            TokenShards(out, split, verify="sizes")
        prepared = open_prepared(out, sampling=sampling)
    except RungError:
        return None
    return prepared


def _collect(out: Path, val_fraction: float) -> dict[str, Any]:
    """Every finished shard per split; a validation split left empty gets one document."""
    splits = {}
    for split in ("train", "validation"):
        splits[split] = _split_summary(out / split)
    if val_fraction > 0 and splits["validation"]["documents"] == 0 and splits["train"]["documents"] > 1:
        _move_last_document(out)
        for split in ("train", "validation"):
            splits[split] = _split_summary(out / split)
    return splits


def _split_summary(folder: Path) -> dict[str, Any]:
    files, tokens, documents = [], 0, 0
    for meta_path in sorted(folder.glob("*.json")):
        meta = json.loads(meta_path.read_text())
        if meta["documents"] == 0:
            continue
        files.append(meta_path.stem)
        tokens += meta["tokens"]
        documents += meta["documents"]
    return {"files": files, "tokens": tokens, "documents": documents}


def _move_last_document(out: Path) -> None:
    """Move the last document of a train shard into a new validation shard (tiny corpora)."""
    import numpy as np

    from rung_pretrain.reader import file_checksum
    from rung_pretrain.shards import ShardWriter

    train = out / "train"
    metas = {p.stem: json.loads(p.read_text()) for p in sorted(train.glob("*.json"))}
    stem = max(metas, key=lambda name: metas[name]["documents"])
    meta = metas[stem]
    if meta["documents"] < 2:
        return
    dtype = np.dtype(meta["dtype"])
    tokens = np.fromfile(train / f"{stem}.tokens", dtype=dtype)
    ends = np.fromfile(train / f"{stem}.idx", dtype="<u8")
    cut = int(ends[-2])
    writer = ShardWriter(out / "validation", 99999, meta["vocab_size"], meta["tokenizer"])
    writer.add(tokens[cut:])
    writer.close()
    kept = tokens[:cut]
    kept.tofile(train / f"{stem}.tokens")
    ends[:-1].tofile(train / f"{stem}.idx")
    meta.update(tokens=int(kept.size), documents=int(ends.size - 1), xxh64=file_checksum(kept))
    (train / f"{stem}.json").write_text(json.dumps(meta) + "\n")


def _report_line(report: list[dict[str, Any]]) -> str:
    parts = []
    for entry in report:
        for reason, removed in entry["removed"].items():
            parts.append(f"{entry['step']}: {removed['docs']} {reason}")
    return ", ".join(parts) or "no documents found"


def _mb(nbytes: int) -> str:
    mb = nbytes / 1e6
    return f"{mb:.1f}" if mb >= 1 else f"{mb:.3g}"


def format_report(report: list[dict[str, Any]]) -> Any:
    """The cleaning report as a rich Table (docs and bytes in/out per step, and why removed)."""
    from rich.table import Table

    from rich import box

    table = Table(title="cleaning report", title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("step", no_wrap=True)
    table.add_column("docs in→out", justify="right", no_wrap=True)
    table.add_column("MB in→out", justify="right", no_wrap=True)
    table.add_column("removed: docs (MB); changed", no_wrap=True)
    for entry in report:
        notes = [f"{reason} {r['docs']:,} ({r['bytes'] / 1e6:.2f})" for reason, r in sorted(entry["removed"].items())]
        if entry["changed"]:
            notes.append(f"changed {entry['changed']:,}")
        table.add_row(entry["step"], f"{entry['docs_in']:,}→{entry['docs_out']:,}",
                      f"{_mb(entry['bytes_in'])}→{_mb(entry['bytes_out'])}", "\n".join(notes) or "-")
    return table

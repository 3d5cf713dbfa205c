"""`prepare()`: sources -> cleaning -> dedup -> tokenizer training -> token shards -> manifest.

Only the orchestration lives here. Every stage is a datatrove pipeline (`stages`) run by its
LocalPipelineExecutor on all cores:

  1 clean      (tasks = workers) reader + filters, exact hashes, MinHash signatures
  2 buckets    (tasks = MinHash buckets) datatrove MinHash stage 2
  3 cluster    (1 task) datatrove MinHash stage 3, then rung's exact-duplicate finder
  4 dedup      (tasks = workers) the same reader + filters, dedup filter, clean corpus writer
  - the run's tokenizer is trained on the clean corpus (if it needs training)
  5 shards     (tasks = workers) tokenization into train/validation token shards

then the splits are summed up (`splits`), the cleaning report built (`cleaning_report`) and
the manifest written with the fingerprint that lets a later call reuse the folder (`prepared`).
The tokenizer and the sources are built by the core, through the run.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import shutil
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rung.disk import size_text, writing
from rung.errors import ConfigError, RungError
from rung_pretrain.corpus import build_sources
from rung_pretrain.prepared import FORMAT, PreparedData, fingerprint, reuse, tokenizer_section
from rung_pretrain.progress import Display, counted
from rung_pretrain.cleaning_report import report_from_stats, report_line
from rung_pretrain.sources.base import Unit
from rung_pretrain.splits import collect_splits
from rung_pretrain.stages import cleaning_stages, cpu_count, quiet_datatrove, run_stage, shard_stage

WORK = ".work"


def _run_of(config_or_run: Any) -> Any:
    """The run to prepare for: a `RunContext` as given, else the core's `Run` of the config
    (a config object, a dict or a YAML path), which builds the tokenizer and sources."""
    from rung.context import RunContext

    if isinstance(config_or_run, RunContext):
        return config_or_run
    from rung.config import load_config, make_config
    from rung.runner import Run

    config = config_or_run
    if isinstance(config, (str, Path)):
        config = load_config(config)
    elif isinstance(config, Mapping):
        config = make_config(config)
    return Run(config)


def _vocab_size(tokenizer: Any) -> int:
    """The tokenizer's vocabulary size, or the largest a uint16 shard holds when it cannot say yet."""
    try:
        return int(tokenizer.vocab_size)
    except Exception:  # noqa: BLE001 - an untrained tokenizer may not know it
        return 65535


def data_options(config: Any) -> Any:
    """The config's `data` section, which must be a corpus."""
    data = getattr(config, "data", None)
    if data is None:
        raise ConfigError("the config has no 'data' section: nothing to prepare "
                          "(add `data: {name: corpus, sources: [...]}`)")
    if data.name != "corpus":
        raise ConfigError(f"data: '{data.name}' is not a corpus; `rung prepare` needs `data.name: corpus`")
    return data


def shards_dir(config: Any) -> Path:
    """Where a config's shards go: data.shards.dir, else <output_dir>/data."""
    data = data_options(config)
    return Path(data.shards.dir) if data.shards.dir else Path(config.output_dir) / "data"


def prepare(config_or_run: Any, *, force: bool = False, progress: bool | None = None,
            workers: int | None = None) -> PreparedData:
    """Make (or reuse) the token shards and tokenizer a config's `data` section describes.

    `config_or_run`: a run (`rung.context.RunContext`: its tokenizer is trained and handed
    back with `run.use_tokenizer`), a config object, a dict, or a YAML path. Nothing is redone
    when the folder's manifest matches the config, the sources and the tokenizer (`force=True`
    redoes it). `progress`: draw progress bars (default: when stderr is a terminal).
    """
    run = _run_of(config_or_run)
    config = run.config
    options = data_options(config)
    out = shards_dir(config)
    sources = build_sources(options, ignore=(out, config.output_dir), run=run)

    units = [Unit(i, key, size) for i, source in enumerate(sources) for key, size in source.units()]
    section = tokenizer_section(config)
    stamp = fingerprint(options, sources, section)
    if progress is None:
        progress = sys.stderr.isatty()

    if not force:
        reused = reuse(out, stamp, options.sampling)
        if reused is not None:
            run.use_tokenizer(reused.tokenizer)
            return reused

    tokenizer = run.tokenizer()
    if tokenizer is None:  # no tokenizer section: rung-tokenizers' BPE with its defaults
        from rung.api import tokenizer as make_tokenizer

        tokenizer = make_tokenizer("bpe")
    started = time.perf_counter()
    workers = workers or options.workers or cpu_count()
    tasks = max(1, min(workers, len(units)))
    work = out / WORK
    written = [out / name for name in ("manifest.json", "train", "validation", "tokenizer", WORK)]
    for path in written:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    from rung_pretrain.shards import token_dtype  # (datatrove: imported when used)

    # a full disk: one line, and everything this call wrote goes (a later call redoes it all)
    corpus = sum(u.size for u in units)
    needed = corpus * (1 + token_dtype(_vocab_size(tokenizer)).itemsize)
    note = (f"an estimate: a clean copy of the {size_text(corpus)} corpus and its token shards; "
            f"the files it wrote are removed")
    with writing(out, needed, remove=written, note=note):
        out.mkdir(parents=True, exist_ok=True)
        logs = Path(options.logging_dir) if options.logging_dir else work / "logs"
        stats_files: list[Path] = []
        with quiet_datatrove(logs / "main.log"), Display(progress) as display:
            for index, stage in enumerate(cleaning_stages(options, sources, units, work, tasks), 1):
                task = display.add(stage.name, stage.total_bytes)
                with display.polling(task, stage.progress):
                    stats_files.append(
                        run_stage(stage, logs / f"{index}-{stage.name.replace(' ', '_').replace('+', '')}", workers)
                    )
                if task is not None and stage.progress is None:
                    display.update(task, total=1, completed=1)
            from rung_pretrain.clean_corpus import read_clean  # (datatrove: imported when used)

            report = report_from_stats(stats_files)
            clean_docs = report[-1]["docs_out"] if report else 0
            clean_bytes = report[-1]["bytes_out"] if report else 0
            if clean_docs == 0:
                raise RungError(f"no documents left after reading and cleaning ({report_line(report)}); logs in {logs}")
            trained = False
            if hasattr(tokenizer, "train") and not getattr(tokenizer, "is_trained", False):
                limit = getattr(getattr(tokenizer, "options", None), "max_training_bytes", None)
                task = display.add("train tokenizer", min(clean_bytes, limit) if limit else clean_bytes)
                fed = [0]
                tokenizer.train(counted((text for _, text in read_clean(work / "clean")), display, task, fed))
                display.update(task, completed=fed[0], total=max(fed[0], 1))
                trained = True
            if tokenizer.eos_id is None:
                raise RungError(f"tokenizer {type(tokenizer).__name__} has no eos token: documents cannot be separated")
            tokenizer_dir = out / "tokenizer"
            tokenizer.save(tokenizer_dir)
            tokenizer_file = tokenizer_dir / "tokenizer.json"
            if not tokenizer_file.is_file():
                raise RungError(f"tokenizer {type(tokenizer).__name__} did not save a tokenizer.json; "
                                "rung-pretrain needs one")
            tokenizer_hash = hashlib.sha256(tokenizer_file.read_bytes()).hexdigest()
            stage = shard_stage(options, work, out, tokenizer_file, tokenizer, tokenizer_hash, tasks)
            task = display.add(stage.name, clean_bytes)
            with display.polling(task, stage.progress):
                stats_files.append(run_stage(stage, logs / "5-token_shards", workers))

        splits = collect_splits(out, options.shards.val_fraction)
        manifest = {
            "format": FORMAT,
            "fingerprint": stamp,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "seconds": round(time.perf_counter() - started, 2),
            "workers": workers,
            "sources": [{**s.describe(), "units": sum(1 for u in units if u.source == i),
                         "bytes": sum(u.size for u in units if u.source == i)} for i, s in enumerate(sources)],
            "tokenizer": {"name": section.get("name"), "class": type(tokenizer).__name__,
                          "vocab_size": tokenizer.vocab_size, "eos_id": tokenizer.eos_id, "sha256": tokenizer_hash,
                          "dir": "tokenizer", "trained_here": trained, "options": section},
            "dtype": token_dtype(tokenizer.vocab_size).str,
            "splits": splits,
            "documents": clean_docs,
            "bytes": clean_bytes,
            "report": report,
            "config": options.model_dump(mode="json"),
        }
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    for name in ("clean", "exact", "minhash", "progress"):
        shutil.rmtree(work / name, ignore_errors=True)
    run.use_tokenizer(tokenizer)
    return PreparedData(out, tokenizer, manifest, report, skipped=False, sampling=options.sampling)

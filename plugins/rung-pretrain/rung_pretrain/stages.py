"""How rung's preparation stages run on datatrove: stage definitions and the local executor.

`pipeline.prepare` strings these together; each `Stage` is a datatrove pipeline (of the steps
in `reading`, `filters`, `dedup`, `clean_corpus` and `shards`) that LocalPipelineExecutor
runs on all cores (or, for scale-out, datatrove's Slurm/Ray executors).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rung.disk import is_disk_full
from rung.errors import RungError


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


# ------------------------------------------------------------------------------ stages


@dataclass
class Stage:
    """One datatrove pipeline and how many tasks run it."""

    name: str
    pipeline: list[Any]
    tasks: int
    progress: str | None = None  # folder of the tasks' progress files
    total_bytes: int | None = None


def reader_and_filters(sources: Sequence[Any], units: Sequence[Any], clean: Any,
                       progress_dir: str | None = None) -> list[Any]:
    """The reader and the cleaning steps, built the same way for every stage that reads, so
    the first MinHash stage (signatures) and the last (filter) see exactly the same documents."""
    from rung_pretrain.dedup import Tag
    from rung_pretrain.filters import ControlChars, LengthFilter, Normalize, QualityFilter, Strip
    from rung_pretrain.reading import SourceReader

    steps: list[Any] = [SourceReader(sources, units, progress_dir)]
    if clean.normalize:
        steps.append(Normalize(clean.normalize))
    if clean.control_chars:
        steps.append(ControlChars())
    if clean.strip:
        steps.append(Strip())
    if clean.min_chars > 0 or clean.max_chars is not None:
        steps.append(LengthFilter(clean.min_chars, clean.max_chars))
    if clean.quality.enabled:
        q = clean.quality
        steps.append(QualityFilter(q.min_alpha_fraction, q.max_line_chars, q.max_duplicate_line_fraction, q.min_words))
    steps.append(Tag())
    return steps


def cleaning_stages(options: Any, sources: list[Any], units: list[Any], work: Path, tasks: int) -> list[Stage]:
    """Stages 1-4: read and clean, dedup, write the clean corpus to `work/clean`.

    Hand each stage's pipeline to datatrove's Slurm or Ray executor (with `tasks` tasks) to
    run them on a cluster.
    """
    from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster
    from datatrove.utils.hashing import HashConfig

    from rung_pretrain.clean_corpus import TextWriter
    from rung_pretrain.dedup import DedupFilter, ExactFind, ExactHashes, MinhashSignatures

    clean = options.clean
    total = sum(u.size for u in units)
    exact_dir = str(work / "exact") if clean.exact_dedup else None
    minhash = clean.minhash
    minhash_dir = str(work / "minhash") if minhash.enabled else None
    stages: list[Stage] = []
    progress = str(work / "progress")

    def reading(stage: str) -> list[Any]:
        return reader_and_filters(sources, units, clean, f"{progress}/{stage}" if stage == "clean" else None)

    if not exact_dir and not minhash_dir:
        pipeline = reading("clean") + [TextWriter(str(work / "clean"))]
        return [Stage("read + clean", pipeline, tasks, f"{progress}/clean", total)]

    first = reading("clean")
    if exact_dir:
        first.append(ExactHashes(exact_dir))
    if minhash_dir:
        config = MinhashConfig(n_grams=minhash.n_grams, num_buckets=minhash.num_buckets,
                               hashes_per_bucket=minhash.hashes_per_bucket, seed=minhash.seed,
                               hash_config=HashConfig(precision=64, hash_fc="xxhash"))
        first.append(MinhashSignatures(f"{minhash_dir}/signatures", config))
    stages.append(Stage("read + clean", first, tasks, f"{progress}/clean", total))
    cluster: list[Any] = []
    if minhash_dir:
        stages.append(
            Stage(
                "minhash buckets",
                [MinhashDedupBuckets(f"{minhash_dir}/signatures", f"{minhash_dir}/buckets", config=config)],
                minhash.num_buckets,
            )
        )
        cluster.append(MinhashDedupCluster(f"{minhash_dir}/buckets", f"{minhash_dir}/remove", config=config))
    if exact_dir:
        cluster.append(ExactFind(exact_dir, tasks, f"{minhash_dir}/remove" if minhash_dir else None))
    stages.append(Stage("find duplicates", cluster, 1))
    last = reading("dedup") + [
        DedupFilter(exact_dir, f"{minhash_dir}/remove" if minhash_dir else None, f"{progress}/dedup"),
        TextWriter(str(work / "clean")),
    ]
    stages.append(Stage("remove duplicates", last, tasks, f"{progress}/dedup", None))
    return stages


def shard_stage(options: Any, work: Path, out: Path, tokenizer_file: Path, tokenizer: Any, tokenizer_hash: str,
                tasks: int) -> Stage:
    """Stage 5: tokenize the clean corpus into train/validation shards under `out`."""
    from rung_pretrain.clean_corpus import CleanCorpusReader
    from rung_pretrain.shards import TokenizeToShards

    shards = options.shards
    step = TokenizeToShards(str(out), str(tokenizer_file), tokenizer.eos_id, tokenizer.vocab_size, tokenizer_hash,
                            val_fraction=shards.val_fraction, max_shard_tokens=shards.max_shard_tokens,
                            batch_docs=shards.batch_docs, progress_dir=str(work / "progress" / "shards"),
                            threads=tasks == 1)
    return Stage(
        "token shards", [CleanCorpusReader(str(work / "clean")), step], tasks, str(work / "progress" / "shards")
    )


# ------------------------------------------------------------------------------ running


class LogFile:
    """A log sink that drops what it cannot write.

    On a full disk every log line fails, and loguru prints each failure with its traceback
    to stderr (dozens of lines per task): the log is only a record, and the error that matters
    reaches the user through the stage's exception, so a line that cannot be written is
    dropped. `owned`: close the stream when loguru removes the sink.
    """

    def __init__(self, stream: Any, owned: bool = False) -> None:
        self.stream, self.owned = stream, owned

    @classmethod
    def at(cls, path: str | Path) -> LogFile:
        return cls(open(path, "a", encoding="utf-8"), owned=True)

    def write(self, message: str) -> None:
        with contextlib.suppress(OSError, ValueError):  # ValueError: written after close
            self.stream.write(message)

    def flush(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.stream.flush()

    def stop(self) -> None:
        if self.owned:
            with contextlib.suppress(OSError, ValueError):
                self.stream.close()


def _quiet_task_logger(logging_dir: Any, rank: int, local_rank: int = 0, node_rank: int = -1) -> Any:
    """datatrove's task logger, writing to its log file only (rung draws progress bars)."""
    from datatrove.utils.logging import logger

    logger.remove()
    logfile = logging_dir.open(f"logs/task_{rank:05d}.log", "w")
    logger.add(LogFile(logfile), colorize=False, level="DEBUG",
               format="{time:YYYY-MM-DD HH:mm:ss.SSS} | {level: <8} | {name}:{function}:{line} - {message}")
    logger.info(f"Launching pipeline for {rank=}")
    return logfile


_MAIN_LOG: list[str] = []


def _quiet_close_task_logger(logfile: Any) -> None:
    """datatrove's close_task_logger, going back to rung's log file instead of stderr."""
    from datatrove.utils.logging import logger

    logger.complete()
    logger.remove()
    if _MAIN_LOG:
        logger.add(LogFile.at(_MAIN_LOG[-1]), level="DEBUG")
    with contextlib.suppress(OSError):  # its last buffered lines on a full disk: dropped
        logfile.close()


def _no_tqdm(iterable: Any = None, *args: Any, **kwargs: Any) -> Any:
    return iterable


@contextlib.contextmanager
def quiet_datatrove(log_file: Path) -> Iterator[None]:
    """datatrove logs to files only while rung draws progress bars; restored afterwards."""
    import datatrove.executor.base as base
    import datatrove.pipeline.dedup.minhash as minhash
    from loguru import logger

    saved = base.add_task_logger, base.close_task_logger, minhash.tqdm
    base.add_task_logger, base.close_task_logger, minhash.tqdm = _quiet_task_logger, _quiet_close_task_logger, _no_tqdm
    log_file.parent.mkdir(parents=True, exist_ok=True)
    _MAIN_LOG.append(str(log_file))
    logger.remove()
    logger.add(LogFile.at(log_file), level="DEBUG")
    try:
        yield
    finally:
        base.add_task_logger, base.close_task_logger, minhash.tqdm = saved
        _MAIN_LOG.pop()
        logger.remove()
        logger.add(sys.stderr, level="WARNING")


def run_stage(stage: Stage, logging_dir: Path, workers: int) -> Path:
    """Run one stage with datatrove's LocalPipelineExecutor; returns its merged stats file."""
    from datatrove.executor.local import LocalPipelineExecutor

    # fork is the fastest start on Linux, but forking a process in which JAX has started its
    # threads can deadlock the child (JAX warns so): then start workers from a fork server.
    linux_fork_safe = sys.platform.startswith("linux") and "jax" not in sys.modules
    method = "fork" if linux_fork_safe else "forkserver"
    executor = LocalPipelineExecutor(stage.pipeline, tasks=stage.tasks, workers=min(workers, stage.tasks),
                                     logging_dir=str(logging_dir), skip_completed=False, start_method=method)
    from rung_pretrain.workers import ctrl_c_ends_workers, dying_with_parent

    try:
        # a killed or interrupted `rung prepare` leaves no worker behind, and Ctrl-C cannot hang it
        with dying_with_parent(method), ctrl_c_ends_workers():
            executor.run()
    except RungError:
        raise
    except Exception as exc:
        if is_disk_full(exc):  # `prepare` says it in one line and removes its work files
            raise
        text = str(exc).strip().splitlines()
        raise RungError(
            f"data preparation failed in stage '{stage.name}' ({type(exc).__name__}: {text[0] if text else ''}); "
            f"logs in {logging_dir / 'logs'}"
        ) from exc
    return logging_dir / "stats.json"

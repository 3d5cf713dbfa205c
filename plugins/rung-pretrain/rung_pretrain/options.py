"""Options of the `corpus` data section and of each source (files, stdlib, hf_dataset).

A config's `data` section, e.g.::

    data:
      name: corpus
      sources:
        - name: stdlib
        - {name: files, paths: ["notes/**/*.md", "data/chat.jsonl"], text_field: text}
      clean: {normalize: NFC, minhash: {n_grams: 5}, quality: false}
      shards: {dir: data/stdlib, val_fraction: 0.01}
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from rung.options import Options
from rung.paths import existing_path

# ------------------------------------------------------------------------------ sources

TEXT_SUFFIXES: list[str] = [
    ".txt", ".md", ".markdown", ".rst", ".tex", ".html", ".htm", ".xml", ".json", ".jsonl",
    ".ndjson", ".jsonl.gz", ".csv", ".tsv", ".yaml", ".yml", ".toml", ".ini", ".cfg",
    ".parquet", ".py", ".pyi", ".ipynb", ".c", ".h", ".cc", ".cpp", ".hpp", ".cu", ".rs",
    ".go", ".java", ".kt", ".scala", ".js", ".jsx", ".ts", ".tsx", ".rb", ".php", ".swift",
    ".m", ".r", ".jl", ".lua", ".pl", ".sh", ".bash", ".zsh", ".sql", ".css", ".scss",
    ".hs", ".ml", ".ex", ".exs", ".erl", ".clj", ".el", ".vim", ".dart", ".zig", ".nim",
]


class FilesOptions(Options):
    """Local files, folders (walked recursively) and glob patterns."""

    paths: list[str] = Field(..., min_length=1, description="files, folders or globs (** allowed)")
    format: Literal["auto", "text", "jsonl", "parquet"] = Field(
        "auto", description="auto: by suffix (.jsonl/.ndjson/.jsonl.gz: JSONL, .parquet: Parquet, else text)"
    )
    text_field: str = Field("text", description="the field holding the text in JSONL and Parquet")
    suffixes: list[str] = Field(
        default_factory=lambda: list(TEXT_SUFFIXES),
        description="in folders, read only files with these suffixes ([] = every file)",
    )
    exclude: list[str] = Field(
        default_factory=list, description="glob patterns (matched against the path) to leave out"
    )
    max_file_bytes: int | None = Field(
        100_000_000, ge=1, description="text files larger than this are skipped and counted"
    )

    @field_validator("paths", mode="before")
    @classmethod
    def _one_path(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    # Checked when the config is validated: a missing corpus is said before any work starts.
    _paths_exist = field_validator("paths")(
        existing_path("any", globs=True, recursive=True, what="a file, folder or matching glob"))


class StdlibOptions(Options):
    """The Python standard library's own source: every .py under sysconfig's stdlib path."""

    path: str | None = Field(None, description="another stdlib folder (default: this Python's)")
    include_tests: bool = Field(True, description="include the test suites (test/, */tests/)")


class HFDatasetOptions(Options):
    """A Hugging Face `datasets` dataset: a hub id (when reachable) or local files."""

    path: str = Field(..., description="hub id (e.g. 'roneneldan/TinyStories') or a builder ('json', 'parquet', "
                                       "'text') or a folder")
    config_name: str | None = Field(None, description="the dataset's configuration (`name=` of load_dataset)")
    data_files: list[str] | str | dict[str, Any] | None = Field(None, description="local files for a builder")
    split: str = "train"
    text_field: str = "text"
    revision: str | None = None
    max_documents: int | None = Field(None, ge=1, description="read at most this many rows")


# ------------------------------------------------------------------------------ cleaning


class MinhashOptions(Options):
    """MinHash near-duplicate removal (datatrove's 3 stages + rung's filter).

    With 14 buckets of 8 hashes, documents whose word 5-grams overlap (Jaccard) above ~0.72
    are likely found (0.8: 92%).
    """

    enabled: bool = True
    n_grams: int = Field(5, ge=1, description="words per shingle")
    num_buckets: int = Field(14, ge=1)
    hashes_per_bucket: int = Field(8, ge=1)
    seed: int = 1


class QualityOptions(Options):
    """Simple document heuristics; a document failing any is removed (reason reported)."""

    enabled: bool = True
    min_alpha_fraction: float | None = Field(
        0.25, ge=0, le=1, description="letters among non-space characters at least this (drops data blobs)"
    )
    max_line_chars: int | None = Field(
        20_000, ge=1, description="no line longer than this (minified or generated files)"
    )
    max_duplicate_line_fraction: float | None = Field(
        0.5, ge=0, le=1, description="at most this fraction of (>=10-char) lines repeat an earlier line"
    )
    min_words: int | None = Field(None, ge=1, description="at least this many whitespace-separated words")


def _bool_to_enabled(value: Any) -> Any:
    if isinstance(value, bool):
        return {"enabled": value}
    if value is None:
        return {"enabled": False}
    return value


class CleanOptions(Options):
    """Each cleaning step, each optional; the report says what each one removed and why."""

    normalize: Literal["NFC", "NFKC", "NFD", "NFKD"] | None = Field(
        "NFC", description="Unicode normalisation form; null: none"
    )
    control_chars: bool = Field(
        True, description="remove control characters (C0 but tab/newline/CR/form feed, DEL, C1)"
    )
    strip: bool = Field(True, description="strip trailing whitespace at the end of each document")
    min_chars: int = Field(1, ge=0, description="drop documents shorter than this (after the steps above)")
    max_chars: int | None = Field(5_000_000, ge=1, description="drop documents longer than this")
    exact_dedup: bool = Field(True, description="drop exact duplicate documents (keep the first)")
    minhash: MinhashOptions = Field(default_factory=MinhashOptions, description="near-duplicate removal; false: off")
    quality: QualityOptions = Field(default_factory=QualityOptions, description="quality heuristics; false: off")

    @field_validator("minhash", "quality", mode="before")
    @classmethod
    def _enabled(cls, value: Any) -> Any:
        return _bool_to_enabled(value)


# ------------------------------------------------------------------------------ shards


class ShardOptions(Options):
    """Where and how token shards are written."""

    dir: str | None = Field(None, description="output folder (default: <output_dir>/data)")
    val_fraction: float = Field(
        0.01, ge=0, lt=1, description="fraction of documents (chosen by a hash of their id) for validation"
    )
    max_shard_tokens: int = Field(
        100_000_000, ge=1000, description="a worker starts a new shard file after this many tokens"
    )
    batch_docs: int = Field(64, ge=1, description="documents per tokenizer batch (small keeps memory flat)")


class CorpusOptions(Options):
    """A pretraining corpus: where documents come from, how they are cleaned and sharded."""

    sources: list[Any] = Field(
        ..., min_length=1,
        description="data sources, each {name: files|stdlib|hf_dataset|..., options}",
    )
    clean: CleanOptions = Field(default_factory=CleanOptions)
    shards: ShardOptions = Field(default_factory=ShardOptions)
    sampling: Literal["random", "sequential"] = Field(
        "random", description="training windows: random positions, or consecutive packed windows"
    )
    workers: int = Field(0, ge=0, description="parallel processes (0: all cores)")
    logging_dir: str | None = Field(None, description="datatrove logs and stats (default: <shards dir>/.work/logs)")

    @field_validator("sources", mode="before")
    @classmethod
    def _validate_sources(cls, value: Any) -> Any:
        if not isinstance(value, list):
            return value
        from rung.api import make_config_section
        from rung.plugins import get_plugins

        registry = get_plugins().registry
        out = []
        for index, item in enumerate(value):
            if isinstance(item, Options):
                out.append(item)
                continue
            if isinstance(item, str):
                item = {"name": item}
            if not isinstance(item, dict) or "name" not in item:
                raise ValueError(f"sources.{index}: a source is a mapping with a 'name'")
            if item["name"] == "corpus":
                raise ValueError(f"sources.{index}: a corpus cannot contain a corpus")
            if item["name"] not in registry.items["data_source"]:
                known = ", ".join(n for n in registry.names("data_source") if n != "corpus")
                raise ValueError(f"sources.{index}: unknown data source '{item['name']}'; installed: {known}")
            try:
                out.append(make_config_section("data_source", item))
            except Exception as exc:  # ConfigError: say which source
                raise ValueError(f"sources.{index}: {exc}") from None
        return out

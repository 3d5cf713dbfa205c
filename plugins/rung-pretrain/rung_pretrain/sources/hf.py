"""A Hugging Face `datasets` dataset: local files through a builder, or the hub if reachable."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from rung.errors import RungError
from rung.records import Document

from rung_pretrain.sources.base import Skip, SourceBase

ROWS_PER_UNIT = 10_000


class HFDatasetSource(SourceBase):
    """Rows of `datasets.load_dataset(path, config_name, data_files=..., split=...)`.

    The dataset is loaded (memory-mapped Arrow, cached by `datasets`) and read in ranges of
    10,000 rows, so parallel workers split it.
    """

    label = "hf_dataset"

    def __init__(self, options: Any, **_: Any) -> None:
        super().__init__(options)
        self._dataset: Any = None

    def dataset(self) -> Any:
        if self._dataset is None:
            try:
                import datasets
            except ImportError:
                raise RungError(
                    "the hf_dataset source needs `datasets`: pip install 'rung-pretrain[datasets]'"
                ) from None
            options = self.options
            try:
                dataset = datasets.load_dataset(
                    options.path, options.config_name, data_files=options.data_files, split=options.split,
                    revision=options.revision,
                )
            except Exception as exc:  # offline, not found, bad files: one line
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise RungError(f"hf_dataset '{options.path}': cannot load it ({first})") from None
            if options.text_field not in dataset.column_names:
                raise RungError(
                    f"hf_dataset '{options.path}': no column '{options.text_field}' (text_field); "
                    f"columns: {', '.join(dataset.column_names)}"
                )
            if options.max_documents is not None and len(dataset) > options.max_documents:
                dataset = dataset.select(range(options.max_documents))
            self._dataset = dataset
        return self._dataset

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_dataset"] = None  # workers load it again (from the local cache)
        return state

    def units(self) -> list[tuple[str, int]]:
        rows = len(self.dataset())
        size = max(1, self.dataset().info.dataset_size or 0) // max(1, rows) if rows else 0
        return [(f"{start}:{min(start + ROWS_PER_UNIT, rows)}", size * min(ROWS_PER_UNIT, rows - start))
                for start in range(0, rows, ROWS_PER_UNIT)]

    def read_unit(self, key: str) -> Iterator[Document | Skip]:
        start, end = (int(x) for x in key.split(":"))
        column = self.dataset().select(range(start, end))[self.options.text_field]
        for row, value in enumerate(column, start):
            where = f"{self.label}:{self.options.path}#{row}"
            if not isinstance(value, str):
                yield Skip("no_text_field", 0, where)
                continue
            yield Document(text=value, id=where, source=self.label)

    def describe(self) -> dict[str, Any]:
        described = super().describe()
        try:
            described["fingerprint"] = self.dataset()._fingerprint
        except Exception:
            pass
        return described

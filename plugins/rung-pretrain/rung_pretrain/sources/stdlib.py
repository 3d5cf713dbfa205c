"""The Python standard library's own source code: a corpus every machine with Python has."""

from __future__ import annotations

import os
import sys
import sysconfig
from typing import Any

from rung.errors import RungError

from rung_pretrain.sources.files import FilesSource

TEST_DIRS = {"test", "tests", "idle_test"}


class StdlibSource(FilesSource):
    """Every `.py` file under `sysconfig.get_paths()["stdlib"]` (site-packages left out).

    About 1,800 files and 31 MB for CPython 3.11, test suites included.
    """

    label = "stdlib"

    def __init__(self, options: Any, **_: Any) -> None:
        super().__init__(options)
        self.path = options.path or sysconfig.get_paths()["stdlib"]
        if not os.path.isdir(self.path):
            raise RungError(f"stdlib source: '{self.path}' is not a folder")

    def roots(self) -> list[str]:
        return [self.path]

    def _accept(self, path: str, from_folder: bool) -> bool:
        return path.endswith(".py")

    def _keep_dir(self, root: str, name: str) -> bool:
        return self.options.include_tests or name not in TEST_DIRS

    def describe(self) -> dict[str, Any]:
        return {"name": self.label, "path": self.path, "python": sys.version.split()[0],
                "include_tests": self.options.include_tests}

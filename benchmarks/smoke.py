"""`--smoke` for every benchmark: the same code paths at the tiniest sizes, in seconds.

CI runs each benchmark this way (tests/benchmarks/test_smoke.py) so none rots between the
times someone measures with it; the figures of a smoke run mean nothing.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import Any


def parse_args(parser: argparse.ArgumentParser, smoke_sizes: dict[str, Any],
               argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line; with `--smoke` (or RUNG_BENCH_SMOKE=1) the defaults become
    `smoke_sizes`, and options given on the command line still win."""
    unknown = set(smoke_sizes) - {action.dest for action in parser._actions}
    if unknown:
        raise ValueError(f"smoke sizes for options the parser lacks: {sorted(unknown)}")
    parser.add_argument("--smoke", action="store_true",
                        help="tiniest sizes, seconds-long: checks the benchmark runs (also RUNG_BENCH_SMOKE=1)")
    args = parser.parse_args(argv)
    if args.smoke or os.environ.get("RUNG_BENCH_SMOKE") == "1":
        parser.set_defaults(**smoke_sizes, smoke=True)
        args = parser.parse_args(argv)
    return args

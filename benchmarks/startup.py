"""Start-up time of the CLI with every installed plugin: `rung --help` and `rung plugins`.

Prints the median wall time of several runs of each, beside a bare `python -c pass` measured
in the same run (the floor no CLI can beat), and the ratio to the 0.2 s goal.

    .venv/bin/python benchmarks/startup.py [--runs 15]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

GOAL_S = 0.2


def median_wall(argv: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    rung = str(Path(sys.executable).with_name("rung"))
    plugins = json.loads(subprocess.run([rung, "plugins", "--json"], capture_output=True, text=True).stdout)
    print(f"plugins installed: {len(plugins['plugins'])} ({', '.join(p['name'] for p in plugins['plugins'])})")
    floor = median_wall([sys.executable, "-c", "pass"], args.runs)
    print(f"python -c pass : {floor:.3f} s (floor)")
    for command in (["--help"], ["plugins"]):
        median = median_wall([rung, *command], args.runs)
        print(f"rung {' '.join(command):<8}: {median:.3f} s median of {args.runs}  "
              f"({median / GOAL_S:.2f}x the {GOAL_S} s goal, {median / floor:.1f}x bare python)")


if __name__ == "__main__":
    main()

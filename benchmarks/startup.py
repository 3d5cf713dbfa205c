"""Start-up time of the CLI with every installed plugin: `rung --help` and `rung plugins`.

Prints the median wall time of several runs of each, beside a bare `python -c pass` measured
in the same run (the floor no CLI can beat), and the ratio to the 0.2 s goal.

    .venv/bin/python benchmarks/startup.py [--runs 15]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from smoke import parse_args

GOAL_S = 0.2
SMOKE = {"runs": 1}


def median_times(argv: list[str], runs: int) -> tuple[float, float]:
    """Median wall time and median CPU time (user + sys) of the child, in seconds.

    CPU time is the steadier figure on a busy shared machine; wall time is what users feel.
    """
    walls, cpus = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        walls.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parse_args(parser, SMOKE)
    rung = str(Path(sys.executable).with_name("rung"))
    plugins = json.loads(subprocess.run([rung, "plugins", "--json"], capture_output=True, text=True).stdout)
    print(f"plugins installed: {len(plugins['plugins'])} ({', '.join(p['name'] for p in plugins['plugins'])})")
    floor, floor_cpu = median_times([sys.executable, "-c", "pass"], args.runs)
    print(f"python -c pass : wall {floor:.3f} s, cpu {floor_cpu:.3f} s (the floor)")
    for command in (["--help"], ["plugins"]):
        wall, cpu = median_times([rung, *command], args.runs)
        print(f"rung {' '.join(command):<8}: wall {wall:.3f} s, cpu {cpu:.3f} s, median of {args.runs}  "
              f"(wall {wall / GOAL_S:.2f}x the {GOAL_S} s goal; {wall / floor:.1f}x bare python)")


if __name__ == "__main__":
    main()

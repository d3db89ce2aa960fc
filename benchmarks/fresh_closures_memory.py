"""Worker memory over many tasks that each bring a fresh closure (issue 8, item 7).

Every task's function is a distinct closure object with distinct captured values, so every
per-function table a worker keeps would grow by one entry per task if it were unbounded. Prints
the workers' (and this process's) resident memory every 100,000 tasks; flat worker numbers are
the goal.

    .venv/bin/python benchmarks/fresh_closures_memory.py 1000000    # about 80 s on 2 cores
"""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import wait
from typing import Callable

from dtm_executor import DTMExecutor


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def make(i: int) -> Callable[[int], int]:
    return lambda x: x + i


def main() -> int:
    total = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    batch = 10_000
    with DTMExecutor(2) as ex:
        pids = [p.pid for p in ex._pool.procs.values()]  # the local transport's worker processes
        t0 = time.time()
        for b in range(total // batch):
            fs = [ex.submit(make(b * batch + i), 1) for i in range(batch)]
            wait(fs)
            assert fs[-1].result() == (b + 1) * batch
            del fs
            if b % 10 == 0 or b == total // batch - 1:
                workers = ", ".join(f"{rss_mib(p):.1f}" for p in pids)
                print(f"{(b + 1) * batch:>9} tasks {time.time() - t0:6.1f} s  worker RSS MiB: {workers}"
                      f"  this process: {rss_mib(os.getpid()):.1f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

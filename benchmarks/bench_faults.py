"""Throughput before and after losing workers, and how fast the pool gets back to strength.

    python benchmarks/bench_faults.py [--workers 4] [--tasks 3000] [--rounds 3] [--transport local]

Each round SIGKILLs two workers, waits until the executor has ``--workers`` live workers again,
and measures the same workload; it prints each round's throughput as a ratio to the first
measurement (taken in the same run: this machine is shared and noisy), and the recovery time (until every replacement has run a task).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import time

from dtm_executor import DTMExecutor


def task(x: int) -> int:
    end = time.perf_counter() + 0.0005  # 0.5 ms of CPU
    while time.perf_counter() < end:
        pass
    return x


def pid_of(_: int) -> int:
    time.sleep(0.002)
    return os.getpid()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def live(ex: DTMExecutor) -> dict[int, int]:
    return {r: p.pid for r, p in list(ex._pool.procs.items()) if _alive(p.pid) and r in ex._node.workers}


def throughput(ex: DTMExecutor, n: int, repeat: int = 3) -> float:
    rates = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fs = [ex.submit(task, i) for i in range(n)]
        for f in fs:
            f.result()
        rates.append(n / (time.perf_counter() - t0))
    return statistics.median(rates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--tasks", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--transport", default="local")
    a = ap.parse_args()
    kw = {"transport": a.transport}
    if a.transport == "tcp":
        kw["hosts"] = [f"localhost slots={a.workers}"]
    with DTMExecutor(a.workers, **kw) as ex:
        throughput(ex, 200, 1)  # warm up
        first = throughput(ex, a.tasks)
        print(f"{'round':>5} {'tasks/s':>9} {'vs first':>8} {'recovery s':>10}")
        print(f"{0:>5} {first:>9.0f} {1.0:>8.2f} {'-':>10}")
        for r in range(1, a.rounds + 1):
            pids = live(ex)
            t0 = time.monotonic()
            for pid in list(pids.values())[:2]:
                os.kill(pid, signal.SIGKILL)
            while len(live(ex)) < a.workers or set(live(ex).values()) & set(list(pids.values())[:2]):
                if time.monotonic() - t0 > 60:
                    raise SystemExit("the pool did not recover within 60 s")
                time.sleep(0.005)
            fresh = set(live(ex).values()) - set(pids.values())
            while fresh:  # until every replacement has run a task
                fresh -= set(ex.map(pid_of, range(4 * a.workers)))
                if time.monotonic() - t0 > 60:
                    raise SystemExit("the replacements ran nothing within 60 s")
            rec = time.monotonic() - t0
            rate = throughput(ex, a.tasks)
            print(f"{r:>5} {rate:>9.0f} {rate / first:>8.2f} {rec:>10.2f}")


if __name__ == "__main__":
    main()

"""Where the CPU goes on flat workloads: CPU time per task, per thread, for every process.

Runs one workload (``submit``: n no-op submits then every result; ``latency``: n no-op round trips one at a
time; ``map``: ``map(inc,
range(n))`` with the executor's default chunking; ``makespan``: the 400 exponential tasks of
bench.py) on one executor (``dtm``, ``pool``, ``ppe``, ``loky``; 2 workers, warmed), and reads
``/proc/<pid>/task/<tid>/schedstat`` of every thread of this process and its workers before and
after: nanosecond CPU time and run-queue wait per thread, so a per-task cost of a few
microseconds is visible (``/proc/.../stat`` counts 10 ms ticks). Threads are named from
``threading.enumerate()`` in each process.

    .venv/bin/python benchmarks/profile_flat.py dtm submit --n 50000
    .venv/bin/python benchmarks/profile_flat.py pool map --n 1000000

Under py-spy (``py-spy record --subprocesses --threads --format raw -o out.txt -- python
benchmarks/profile_flat.py dtm submit``) the same run gives the functions behind those numbers.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import sys
import threading
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench import WORKERS, busy, inc, make_executor, noop, timed_busy, warm  # noqa: E402


def thread_names(_: Any = None) -> tuple[int, dict[int, str]]:
    busy(0.005)  # long enough that every worker gets one of these
    return os.getpid(), {t.native_id: t.name for t in threading.enumerate() if t.native_id is not None}


def _threads(pid: int) -> dict[int, tuple[int, int, int]]:
    """tid -> (ns on CPU, ns waiting in the run queue, timeslices) of every thread of ``pid``."""
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                a, b, c = f.read().split()
            out[int(tid)] = (int(a), int(b), int(c))
        except (OSError, ValueError):
            pass
    return out


def _children(pid: int) -> list[int]:
    kids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    rest = f.read().rsplit(")", 1)[1].split()
                if int(rest[1]) == pid:
                    kids.append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    return kids


class _GcClock:
    """Time this process spends in the cyclic garbage collector, per generation."""

    def __init__(self) -> None:
        self.t0 = 0.0
        self.time = [0.0, 0.0, 0.0]
        self.count = [0, 0, 0]
        gc.callbacks.append(self)

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self.t0 = time.perf_counter()
        else:
            g = info["generation"]
            self.time[g] += time.perf_counter() - self.t0
            self.count[g] += 1

    def reset(self) -> None:
        self.time = [0.0, 0.0, 0.0]
        self.count = [0, 0, 0]


def run(key: str, workload: str, n: int) -> None:
    gcc = _GcClock()
    with make_executor(key) as ex:
        warm(ex)
        names: dict[int, dict[int, str]] = {}
        for _ in range(3):
            for f in [ex.submit(thread_names) for _ in range(4 * WORKERS)]:
                pid, m = f.result()
                names.setdefault(pid, {}).update(m)
        me = os.getpid()
        names[me] = {t.native_id: t.name for t in threading.enumerate() if t.native_id is not None}
        pids = [me, *_children(me)]
        before = {p: _threads(p) for p in pids}
        gcc.reset()
        t0 = time.perf_counter()
        if workload == "submit":
            futs = [ex.submit(noop, i) for i in range(n)]
            t_sub = time.perf_counter() - t0
            assert sum(f.result() for f in futs) == n * (n - 1) // 2
        elif workload == "map":
            it = ex.map(inc, range(n))
            t_sub = time.perf_counter() - t0
            assert sum(it) == n * (n + 1) // 2
        elif workload == "latency":  # one task at a time: the round trip of submit -> result
            lat = []
            for i in range(n):
                a = time.perf_counter()
                ex.submit(noop, i).result()
                lat.append(time.perf_counter() - a)
            t_sub = 0.0
        elif workload == "makespan":
            rng = random.Random(12345)
            durs = [rng.expovariate(1 / 0.010) for _ in range(n)]
            futs = [ex.submit(timed_busy, d) for d in durs]
            t_sub = time.perf_counter() - t0
            measured = [f.result() for f in futs]
        else:
            raise SystemExit(f"unknown workload {workload!r}")
        wall = time.perf_counter() - t0
        gc_time, gc_count = list(gcc.time), list(gcc.count)
        after = {p: _threads(p) for p in pids}
        # names of threads started meanwhile (the parent's handler threads, DTM's exec threads)
        names[me].update({t.native_id: t.name for t in threading.enumerate() if t.native_id is not None})
    print(f"{key} {workload} n={n}: wall {wall:.3f} s, {n / wall:,.0f} per s; the submitting loop took "
          f"{t_sub:.3f} s ({t_sub / n * 1e6:.2f} us per item)")
    print(f"  parent's cyclic GC: {sum(gc_time) * 1e3:.1f} ms = {sum(gc_time) / n * 1e6:.2f} us per item "
          f"(collections by generation {gc_count}, ms {[round(t * 1e3, 1) for t in gc_time]})")
    if workload == "latency":
        lat.sort()
        print(f"  round trip: median {lat[n // 2] * 1e6:.0f} us, 10% {lat[n // 10] * 1e6:.0f} us, "
              f"90% {lat[9 * n // 10] * 1e6:.0f} us, 99% {lat[99 * n // 100] * 1e6:.0f} us")
    if workload == "makespan":
        lb = max(sum(measured) / WORKERS, max(measured))
        print(f"  makespan/LB {wall / lb:.3f} (LB {lb:.3f} s)")
    total_cpu = 0
    print(f"  {'process':<10} {'thread':<28} {'CPU us/item':>11} {'runq us/item':>12} {'slices/1k items':>15}")
    for p in pids:
        for tid, (c1, w1, s1) in sorted(after[p].items()):
            c0, w0, s0 = before[p].get(tid, (0, 0, 0))
            cpu, wait, sl = c1 - c0, w1 - w0, s1 - s0
            if cpu < 1e6 and sl < 5:  # idle threads
                continue
            total_cpu += cpu
            who = "parent" if p == me else f"worker {p}"
            name = names.get(p, {}).get(tid, "main" if tid == p else f"tid {tid}")
            print(f"  {who:<10} {name:<28} {cpu / n / 1e3:>11.2f} {wait / n / 1e3:>12.2f} {sl / n * 1e3:>15.1f}")
    print(f"  total CPU {total_cpu / 1e9:.3f} s = {total_cpu / n / 1e3:.2f} us per item "
          f"({total_cpu / 1e9 / wall:.2f} cores busy of {os.cpu_count()})")


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("executor", choices=["dtm", "pool", "ppe", "loky"])
    p.add_argument("workload", choices=["submit", "map", "makespan", "latency"])
    p.add_argument("--n", type=int, default=0, help="items (default: submit 20000, map 100000, makespan 400)")
    args = p.parse_args()
    n = args.n or {"submit": 20000, "map": 100000, "makespan": 400, "latency": 2000}[args.workload]
    run(args.executor, args.workload, n)


if __name__ == "__main__":
    main()

"""Benchmarks: DTMExecutor against concurrent.futures.ProcessPoolExecutor, in the same run.

Both executors get 2 workers (DTMExecutor on the local transport). Every case runs in a fresh
interpreter (so no pool, thread or chunk-size memory leaks from one case into the next, and a hang
becomes a TIMEOUT row with the stacks saved instead of a stuck run), starts its pools, warms them
(except ``startup``), then times the work. The table gives, per case, our number, the baseline's,
their ratio (oriented so that > 1 means DTMExecutor does better) and the target with whether it
is met. Speed is never asserted by the test suite: this script only prints (``--quick`` is the
short smoke run a test uses).

The machine this was written on is shared: each case also reports how many cores *other*
processes kept busy while it was timed, so a slow number can be told from a busy machine.

    .venv/bin/python benchmarks/bench.py                 # everything once (about 2 minutes)
    .venv/bin/python benchmarks/bench.py --repeat 3      # medians of 3 interleaved runs + spread
    .venv/bin/python benchmarks/bench.py --quick         # small sizes: a smoke run (~20 s)
    .venv/bin/python benchmarks/bench.py --only tree,transfer --json out.json

Cases: submit, map, efficiency, makespan, tree, transfer, deap, startup. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from time import perf_counter
from typing import Any, Callable

from dtm_executor import DTMExecutor, current_executor

try:  # optional: the transfer and deap cases need them (``pip install dtm_executor[bench]``)
    import numpy as np
except ImportError:  # pragma: no cover
    np = None  # type: ignore[assignment]

try:
    from deap import algorithms, base, creator, tools

    # Module level, so worker processes (which import this script as their main module) have them.
    if not hasattr(creator, "BenchFitnessMax"):
        creator.create("BenchFitnessMax", base.Fitness, weights=(1.0,))
        creator.create("BenchIndividual", list, fitness=creator.BenchFitnessMax)
except ImportError:  # pragma: no cover
    creator = None  # type: ignore[assignment]

WORKERS = 2
NOISY = 0.5  # cores busy with other processes above which a timing says more about the machine


# -- task functions (module level: workers import this script like multiprocessing spawn) ----
def noop(x: Any) -> Any:
    return x


def inc(x: int) -> int:
    return x + 1


def busy(seconds: float) -> None:
    """Burn CPU (not sleep) for ``seconds`` of wall time."""
    end = perf_counter() + seconds
    while perf_counter() < end:
        pass


def timed_busy(seconds: float) -> float:
    """Burn CPU for ``seconds``; return the duration measured inside the task."""
    t0 = perf_counter()
    busy(seconds)
    return perf_counter() - t0


def tree(depth: int, leaf_seconds: float) -> tuple[int, dict[int, int]]:
    """A binary tree of tasks: each node submits its two children and waits on them.

    Returns (leaves, {pid: peak threading.active_count() seen by a task of that process}).
    """
    pid = os.getpid()
    peak = {pid: threading.active_count()}
    if depth == 0:
        busy(leaf_seconds)
        return 1, peak
    ex = current_executor()
    a = ex.submit(tree, depth - 1, leaf_seconds)
    b = ex.submit(tree, depth - 1, leaf_seconds)
    (na, pa), (nb, pb) = a.result(), b.result()
    peak[pid] = max(peak[pid], threading.active_count())
    for sub in (pa, pb):
        for p, n in sub.items():
            if n > peak.get(p, 0):
                peak[p] = n
    return na + nb, peak


EVAL_SECONDS = 0.001


def eval_onemax(individual: list[int]) -> tuple[float]:
    busy(EVAL_SECONDS)  # stands in for an expensive CPU-bound evaluation
    return (float(sum(individual)),)


def eval_onemax_free(individual: list[int]) -> tuple[float]:
    """The same evaluation without its cost: times the GA's own serial work (selection, cloning,
    variation), which no executor can spread (Amdahl)."""
    return (float(sum(individual)),)


# -- reporting ---------------------------------------------------------------------------------
@dataclass
class Row:
    case: str
    ours: float | None
    baseline: float | None
    unit: str
    ratio: float | None  # > 1: DTMExecutor does better
    target: str
    met: bool | None  # None: informational row
    notes: list[str] = field(default_factory=list)
    others: float | None = None  # cores other processes kept busy while timed (worst of both)


def _fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "n/a"
    if unit in ("tasks/s", "items/s"):
        return f"{v:,.0f} {unit}"
    if unit == "MB/s":
        return f"{v:,.0f} {unit}"
    if unit == "s":
        return f"{v:.3f} s"
    if unit == "x":
        return f"{v:.3f}x"
    return f"{v:.3f}{(' ' + unit) if unit else ''}"


def print_table(rows: list[Row]) -> None:
    head = ("case", "ours", "baseline (PPE)", "ratio", "target", "met?", "others")
    lines = [
        (
            r.case,
            _fmt(r.ours, r.unit),
            _fmt(r.baseline, r.unit),
            "n/a" if r.ratio is None else f"{r.ratio:.2f}",
            r.target,
            "-" if r.met is None else ("yes" if r.met else "NO"),
            "" if r.others is None else f"{r.others:.2f}" + (" !" if r.others > NOISY else ""),
        )
        for r in rows
    ]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(head)]
    sep = "  "
    print()
    print(sep.join(h.ljust(w) for h, w in zip(head, widths)))
    print(sep.join("-" * w for w in widths))
    for line in lines:
        print(sep.join(c.ljust(w) for c, w in zip(line, widths)))
    print("ratio: > 1 means DTMExecutor does better (for times: baseline / ours).")
    print(f"others: cores (of {os.cpu_count()}) that other processes kept busy while the case was timed; "
          f"'!' above {NOISY}: the machine was too busy for a fair verdict.")
    notes = [(r.case, n) for r in rows for n in r.notes]
    if notes:
        print()
        for case, n in notes:
            print(f"[{case}] {n}")


def log(msg: str) -> None:
    print(msg, flush=True)


# -- helpers ---------------------------------------------------------------------------------------
def dtm_pool() -> Executor:
    return DTMExecutor(WORKERS, transport="local")


def ppe_pool() -> Executor:
    return ProcessPoolExecutor(WORKERS)


def warm(ex: Any) -> None:
    """Start every worker and push a little traffic through (with functions not measured later,
    so DTMExecutor's map chunk sizer starts cold on the measured function)."""
    for f in [ex.submit(busy, 0.02) for _ in range(2 * WORKERS)]:
        f.result()
    for f in [ex.submit(abs, -i) for i in range(200)]:
        f.result()


_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _descendants(pid: int) -> list[int]:
    out: list[int] = []
    try:
        kids = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True,
                              text=True, timeout=10).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return out
    for k in kids:
        out.append(int(k))
        out.extend(_descendants(int(k)))
    return out


def _proc_cpu(pid: int) -> int:
    """utime + stime of a whole process (its exited threads included), in clock ticks."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return 0


def _machine_cpu() -> tuple[int, int]:
    """(busy ticks of all CPUs, ticks stolen by the hypervisor) from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return v[0] + v[1] + v[2] + v[5] + v[6], v[7]
    except (OSError, IndexError, ValueError):
        return 0, 0


class timed:
    """Wall time of a block, and how many cores *other* processes kept busy meanwhile.

    The machine is shared: a case that looks slow while others used 1.5 of our 2 cores says
    little about the executor. ``others`` = (machine busy CPU - this process tree's CPU) / wall.
    """

    def __enter__(self) -> "timed":
        self.pids = [os.getpid(), *_descendants(os.getpid())]
        self._ours = sum(_proc_cpu(p) for p in self.pids)
        self._machine, self._steal = _machine_cpu()
        self._t0 = perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.wall = perf_counter() - self._t0
        ours = sum(_proc_cpu(p) for p in self.pids) - self._ours
        machine, steal = _machine_cpu()
        self.ours_cpu = ours / _HZ
        self.others = max(0.0, (machine - self._machine - ours) / _HZ / self.wall)
        self.steal = (steal - self._steal) / _HZ / self.wall


def _busiest(*ts: timed) -> float:
    return max(t.others for t in ts)


def load_note(ours: timed, base: timed | None = None) -> str:
    txt = f"other processes kept {ours.others:.2f} of {os.cpu_count()} cores busy during ours"
    if base is not None:
        txt += f", {base.others:.2f} during PPE"
    return txt


# -- cases ---------------------------------------------------------------------------------------
def case_submit(quick: bool) -> list[Row]:
    n = 500 if quick else 5000

    def run(ex: Any) -> timed:
        warm(ex)
        with timed() as t:
            futs = [ex.submit(noop, i) for i in range(n)]
            total = sum(f.result() for f in futs)
        assert total == n * (n - 1) // 2
        return t

    with dtm_pool() as ex:
        to = run(ex)
    with ppe_pool() as ex:
        tb = run(ex)
    ours, base_ = n / to.wall, n / tb.wall
    ratio = ours / base_
    return [Row(f"submit {n} trivial", ours, base_, "tasks/s", ratio, "ratio >= 4", ratio >= 4,
                [load_note(to, tb)], _busiest(to, tb))]


def case_map(quick: bool) -> list[Row]:
    n = 10_000 if quick else 100_000
    manual = max(1, n // (WORKERS * 8))  # a good hand-picked chunksize for PPE (see docs)
    expect = n * (n + 1) // 2

    def run(ex: Any, chunksize: int | None) -> timed:
        warm(ex)
        with timed() as t:
            if chunksize is None:
                total = sum(ex.map(inc, range(n)))
            else:
                total = sum(ex.map(inc, range(n), chunksize=chunksize))
        assert total == expect
        return t

    with dtm_pool() as ex:
        to = run(ex, None)
    with ppe_pool() as ex:
        tb = run(ex, 1)
    with ppe_pool() as ex:
        tm = run(ex, manual)
    ours, base1, base_manual = n / to.wall, n / tb.wall, n / tm.wall
    return [
        Row(f"map {n} trivial (default chunks)", ours, base1, "items/s", ours / base1,
            "ours >= 1,000,000/s", ours >= 1e6,
            [f"PPE with chunksize={manual}: {base_manual:,.0f} items/s "
             f"(ours / that = {ours / base_manual:.2f})", load_note(to, tb)], _busiest(to, tb)),
    ]


def case_efficiency(quick: bool) -> list[Row]:
    n, dur = (40, 0.02) if quick else (200, 0.02)

    def run(ex: Any) -> tuple[float, timed]:
        warm(ex)
        with timed() as t:
            futs = [ex.submit(timed_busy, dur) for _ in range(n)]
            busy_sum = sum(f.result() for f in futs)
        return busy_sum / (WORKERS * t.wall), t

    with dtm_pool() as ex:
        ours, to = run(ex)
    with ppe_pool() as ex:
        base_, tb = run(ex)
    return [Row(f"efficiency {n} x {dur * 1000:.0f} ms CPU", ours, base_, "", ours / base_,
                "ours >= 0.97", ours >= 0.97, [load_note(to, tb)], _busiest(to, tb))]


def case_makespan(quick: bool) -> list[Row]:
    n = 80 if quick else 400
    rng = random.Random(12345)
    durs = [rng.expovariate(1 / 0.010) for _ in range(n)]

    def run(ex: Any) -> tuple[float, str, timed]:
        warm(ex)
        with timed() as t:
            futs = [ex.submit(timed_busy, d) for d in durs]
            measured = [f.result() for f in futs]
        lb = max(sum(measured) / WORKERS, max(measured))
        return t.wall / lb, f"wall {t.wall:.3f} s, lower bound {lb:.3f} s", t

    with dtm_pool() as ex:
        ours, on, to = run(ex)
    with ppe_pool() as ex:
        base_, bn, tb = run(ex)
    return [Row(f"makespan/LB {n} exp(10 ms) CPU", ours, base_, "x", base_ / ours,
                "ours <= 1.04", ours <= 1.04,
                [f"ours: {on}; PPE: {bn}; seed 12345, total {sum(durs):.3f} s, "
                 f"longest {max(durs) * 1000:.1f} ms", load_note(to, tb)], _busiest(to, tb))]


def case_tree(quick: bool) -> list[Row]:
    depth = 6 if quick else 10
    leaf = 0.001
    ideal = (2 ** depth) * leaf / WORKERS
    with dtm_pool() as ex:
        warm(ex)
        ex.submit(tree, 3, leaf).result()  # warm the nesting path too
        with timed() as t:
            leaves, peaks = ex.submit(tree, depth, leaf).result()
        with timed() as t0:  # the same tree with empty leaves: what the scheduling alone costs
            ex.submit(tree, depth, 0.0).result()
    assert leaves == 2 ** depth
    x = t.wall / ideal
    peak_txt = ", ".join(f"pid {p}: {n}" for p, n in sorted(peaks.items()))
    return [Row(f"tree depth {depth}, 1 ms leaves: wall/ideal", x, None, "x", None,
                "ours <= 1.2", x <= 1.2,
                [f"wall {t.wall:.3f} s vs ideal {ideal:.3f} s ({2 ** depth} leaves x 1 ms / {WORKERS}); "
                 f"our processes used {t.ours_cpu:.2f} CPU-s; the same tree with 0 ms leaves took "
                 f"{t0.wall:.3f} s ({t0.wall / (2 ** (depth + 1) - 1) * 1e6:.0f} us of wall per task)",
                 f"peak threading.active_count() per worker process: {peak_txt}",
                 "PPE: n/a (a task cannot submit to its own pool: tasks would block every worker)",
                 load_note(t)], t.others)]


def case_transfer(quick: bool) -> list[Row]:
    if np is None:
        return [Row("transfer (numpy missing)", None, None, "MB/s", None, "ratio >= 3", None)]
    trips = 3 if quick else 20
    nbytes = 25_000_000
    arr = np.random.default_rng(0).random(nbytes // 8)
    small = arr[: 1 << 17].copy()

    def run(ex: Any) -> timed:
        warm(ex)
        ex.submit(noop, small).result()
        with timed() as t:
            for _ in range(trips):
                out = ex.submit(noop, arr).result()
        assert out.shape == arr.shape and out[-1] == arr[-1]
        return t

    with dtm_pool() as ex:
        to = run(ex)
    with ppe_pool() as ex:
        tb = run(ex)
    ours, base_ = trips * nbytes / 1e6 / to.wall, trips * nbytes / 1e6 / tb.wall
    ratio = ours / base_
    return [Row(f"{trips} round trips of a 25 MB array", ours, base_, "MB/s", ratio,
                "ratio >= 3", ratio >= 3,
                ["MB/s = trips x 25 MB / wall (each trip moves the array there and back)",
                 load_note(to, tb)], _busiest(to, tb))]


def _onemax(map_fn: Callable[..., Any], pop_size: int, ngen: int,
            evaluate: Callable[..., Any] = eval_onemax) -> tuple[timed, float]:
    toolbox = base.Toolbox()
    toolbox.register("attr_bool", random.randint, 0, 1)
    toolbox.register("individual", tools.initRepeat, creator.BenchIndividual, toolbox.attr_bool, 100)
    toolbox.register("population", tools.initRepeat, list, toolbox.individual)
    toolbox.register("evaluate", evaluate)
    toolbox.register("mate", tools.cxTwoPoint)
    toolbox.register("mutate", tools.mutFlipBit, indpb=0.05)
    toolbox.register("select", tools.selTournament, tournsize=3)
    toolbox.register("map", map_fn)
    random.seed(64)
    with timed() as t:
        pop = toolbox.population(n=pop_size)
        hof = tools.HallOfFame(1)
        algorithms.eaSimple(pop, toolbox, cxpb=0.5, mutpb=0.2, ngen=ngen, halloffame=hof, verbose=False)
    return t, hof[0].fitness.values[0]


def case_deap(quick: bool) -> list[Row]:
    if creator is None:
        return [Row("DEAP OneMax (deap missing)", None, None, "x", None, "ours >= 1.8x", None)]
    pop, ngen = (60, 3) if quick else (300, 10)
    ts, best_serial = _onemax(map, pop, ngen)
    tfree, best_free = _onemax(map, pop, ngen, eval_onemax_free)
    with dtm_pool() as ex:
        warm(ex)
        to, best_ours = _onemax(ex.map, pop, ngen)
    with ppe_pool() as ex:
        warm(ex)
        tb, best_ppe = _onemax(ex.map, pop, ngen)
    assert best_serial == best_free == best_ours == best_ppe, (best_serial, best_ours, best_ppe)
    ours, base_ = ts.wall / to.wall, ts.wall / tb.wall
    # Amdahl: the GA's own work (tfree) stays serial; only the evaluations (ts - tfree) spread.
    evals = max(0.0, ts.wall - tfree.wall)
    bound = ts.wall / (tfree.wall + evals / WORKERS)
    return [Row(f"DEAP OneMax pop {pop} x {ngen} gen, 1 ms eval: speedup", ours, base_, "x",
                ours / base_, "ours >= 1.8x", ours >= 1.8,
                [f"builtin map {ts.wall:.3f} s, DTMExecutor.map {to.wall:.3f} s, PPE.map {tb.wall:.3f} s",
                 f"GA's serial work (same GA, free evaluation) {tfree.wall:.3f} s -> Amdahl bound on "
                 f"{WORKERS} workers: {bound:.2f}x (ours reaches {ours / bound:.0%} of it)",
                 load_note(to, tb) + f", {ts.others:.2f} during the builtin map"],
                _busiest(to, tb, ts))]


_STARTUP_SCRIPT = textwrap.dedent(
    """
    import os, sys, time

    T0 = float(os.environ["DTM_BENCH_T0"])

    def one():
        return 1

    if __name__ == "__main__":
        if sys.argv[1] == "dtm":
            from dtm_executor import DTMExecutor
            ex = DTMExecutor(2)
        else:
            from concurrent.futures import Executor, ProcessPoolExecutor
            import multiprocessing as mp
            ex = ProcessPoolExecutor(2, mp_context=mp.get_context(sys.argv[2]))
        assert ex.submit(one).result() == 1
        print(time.monotonic() - T0, flush=True)
        ex.shutdown()
    """
)


def _startup_once(path: str, *argv: str) -> tuple[float, float]:
    env = dict(os.environ)
    t0 = time.monotonic()  # CLOCK_MONOTONIC: comparable across processes on Linux
    env["DTM_BENCH_T0"] = repr(t0)
    out = subprocess.run([sys.executable, path, *argv], env=env, capture_output=True, text=True,
                         timeout=60, check=True)
    whole = time.monotonic() - t0
    return float(out.stdout.strip().splitlines()[-1]), whole


def case_startup(quick: bool) -> list[Row]:
    reps = 1 if quick else 5
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "startup_probe.py")
        with open(path, "w") as f:
            f.write(_STARTUP_SCRIPT)

        def med(*argv: str) -> tuple[float, float]:
            got = [_startup_once(path, *argv) for _ in range(reps)]
            firsts = sorted(g[0] for g in got)
            wholes = sorted(g[1] for g in got)
            return firsts[len(firsts) // 2], wholes[len(wholes) // 2]

        bare = sorted(
            _time_cmd([sys.executable, "-c", "pass"]) for _ in range(reps)
        )[reps // 2]
        ours, ours_whole = med("dtm")
        fork, fork_whole = med("ppe", "fork")
        spawn, spawn_whole = med("ppe", "spawn")
    return [Row("startup to first result (PPE: fork)", ours, fork, "s", fork / ours, "info", None,
                [f"median of {reps}; whole subprocess wall incl. shutdown: ours {ours_whole:.3f} s, "
                 f"PPE fork {fork_whole:.3f} s, PPE spawn {spawn_whole:.3f} s",
                 f"PPE with spawn: first result {spawn:.3f} s; bare `python -c pass`: {bare:.3f} s"])]


def _time_cmd(cmd: list[str]) -> float:
    t0 = time.monotonic()
    subprocess.run(cmd, check=True, timeout=60)
    return time.monotonic() - t0


CASES: dict[str, Callable[[bool], list[Row]]] = {
    "submit": case_submit,
    "map": case_map,
    "efficiency": case_efficiency,
    "makespan": case_makespan,
    "tree": case_tree,
    "transfer": case_transfer,
    "deap": case_deap,
    "startup": case_startup,
}


def _child(name: str, quick: bool) -> int:
    """Run one case in this (child) process and print its rows as JSON on the last line."""
    rows = CASES[name](quick)
    print("ROWS " + json.dumps([asdict(r) for r in rows]), flush=True)
    return 0


def _dump_hung(pid: int) -> str:
    """py-spy stacks of a hung case and its workers (when py-spy is installed)."""
    spy = os.path.join(os.path.dirname(sys.executable), "py-spy")
    if not os.path.exists(spy):
        return "(install py-spy in the venv to get the stacks of a hung case)"
    text = []
    for p in [pid, *_descendants(pid)]:
        try:
            text.append(subprocess.run([spy, "dump", "--pid", str(p)], capture_output=True,
                                       text=True, timeout=30).stdout)
        except (OSError, subprocess.SubprocessError) as e:
            text.append(f"pid {p}: {e}")
    return "\n".join(text)


def _run_case(name: str, quick: bool, timeout: float) -> list[Row]:
    """Each case runs in a fresh interpreter: no state (threads, chunk-size memory, pools) leaks
    from one case to the next, and a hang is reported instead of stalling the whole run."""
    cmd = [sys.executable, os.path.abspath(__file__), "--case", name] + (["--quick"] if quick else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stacks = _dump_hung(proc.pid)
        kids = _descendants(proc.pid)
        proc.kill()  # its DTM workers would exit anyway when their socket to it closes
        proc.communicate()
        for k in kids:  # the worker processes this case started, by pid
            try:
                os.kill(k, 9)
            except OSError:
                pass
        path = os.path.join(tempfile.gettempdir(), f"dtm-bench-hung-{name}-{proc.pid}.txt")
        with open(path, "w") as f:
            f.write(stacks)
        return [Row(f"{name}: TIMEOUT after {timeout:.0f} s", None, None, "", None, "-", False,
                    [f"stacks of the hung processes written to {path}"])]
    for line in out.splitlines():
        if line.startswith("ROWS "):
            return [Row(**r) for r in json.loads(line[5:])]
    print(out)
    return [Row(f"{name}: FAILED (exit status {proc.returncode})", None, None, "", None, "-", False)]


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else 0.5 * (xs[mid - 1] + xs[mid])


def _aggregate(runs: list[list[Row]]) -> list[Row]:
    """Several runs of one case: the median, with the spread in a note (targets judged on it)."""
    if len(runs) == 1:
        return runs[0]
    out: list[Row] = []
    for i, first in enumerate(runs[0]):
        same = [r[i] for r in runs if len(r) > i and r[i].case == first.case]
        if len(same) != len(runs) or any(r.ours is None for r in same):
            out.extend(r[i] for r in runs if len(r) > i)
            continue
        ours = [r.ours for r in same if r.ours is not None]
        base_ = [r.baseline for r in same if r.baseline is not None]
        ratio = [r.ratio for r in same if r.ratio is not None]
        med = _median(ours)
        busy_others = [r.others for r in same if r.others is not None]
        agg = Row(first.case, med, _median(base_) if base_ else None, first.unit,
                  _median(ratio) if ratio else None, first.target, None, [],
                  _median(busy_others) if busy_others else None)
        mets = [r.met for r in same]
        if first.met is not None:
            agg.met = sorted(mets, key=lambda m: (m is not None, m))[len(mets) // 2]  # median run's verdict
        spread = f"{len(runs)} runs: ours {', '.join(_fmt(v, first.unit) for v in ours)}"
        if base_:
            spread += f"; baseline {', '.join(_fmt(v, first.unit) for v in base_)}"
        met_runs = sum(1 for m in mets if m)
        if first.met is not None:
            spread += f"; target met in {met_runs}/{len(runs)}"
        agg.notes.append(spread)
        for k, r in enumerate(same):
            agg.notes.extend(f"run {k + 1}: {n}" for n in r.notes)
        out.append(agg)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    p.add_argument("--only", default="", help=f"comma-separated cases among {', '.join(CASES)}")
    p.add_argument("--repeat", type=int, default=1,
                   help="run every case this many times (interleaved); report medians and spread")
    p.add_argument("--json", default="", help="also write the rows to this JSON file")
    p.add_argument("--timeout", type=float, default=0.0,
                   help="seconds allowed per case (default 60 with --quick, else 180)")
    p.add_argument("--case", default="", help=argparse.SUPPRESS)  # internal: run one case here
    args = p.parse_args(argv)
    if args.case:
        return _child(args.case, args.quick)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(CASES)
    unknown = [n for n in names if n not in CASES]
    if unknown:
        p.error(f"unknown case(s) {unknown}; choose among {list(CASES)}")
    timeout = args.timeout or (60.0 if args.quick else 180.0)
    try:
        load = os.getloadavg()
    except OSError:  # pragma: no cover
        load = (math.nan,) * 3
    log(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs, "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {WORKERS} workers each"
        f"{'; QUICK sizes' if args.quick else ''}{f'; {args.repeat} runs per case' if args.repeat > 1 else ''}")
    runs: dict[str, list[list[Row]]] = {n: [] for n in names}
    start = perf_counter()
    for rep in range(max(1, args.repeat)):
        for name in names:
            t0 = perf_counter()
            runs[name].append(_run_case(name, args.quick, timeout))
            log(f"  {name}{f' (run {rep + 1})' if args.repeat > 1 else ''}: done in {perf_counter() - t0:.1f} s")
    rows = [r for name in names for r in _aggregate(runs[name])]
    if args.quick:  # the targets are stated for the full sizes: small ones only smoke-test
        for r in rows:
            r.met = None
    print_table(rows)
    if args.quick:
        log("QUICK sizes: the targets apply to the full sizes only (met? left blank).")
    log(f"\ntotal {perf_counter() - start:.1f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"quick": args.quick, "load": load, "rows": [asdict(r) for r in rows],
                       "runs": {n: [[asdict(r) for r in rs] for rs in v] for n, v in runs.items()}},
                      f, indent=1)
    broken = any("TIMEOUT" in r.case or "FAILED" in r.case for rs in runs.values() for x in rs for r in x)
    return 1 if broken else 0  # a missed target is not an error: only hangs and crashes are


if __name__ == "__main__":
    sys.exit(main())

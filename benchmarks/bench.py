"""Benchmarks: DTMExecutor against multiprocessing.Pool, ProcessPoolExecutor and loky, in one run.

Every executor gets 2 workers (DTMExecutor on the local transport; the others with their
defaults: ``multiprocessing.Pool`` and ``ProcessPoolExecutor`` with the platform's default start
method, loky with its own). Every case runs each executor in a fresh interpreter of its own (so
no pool, thread, fork or chunk-size memory leaks from one measurement into the next, and a hang
becomes a TIMEOUT cell with the stacks saved instead of a stuck run), starts its pool, warms it
(except ``startup`` and ``import``), then times the work. The table gives, per case, every
executor's number, DTMExecutor's ratio to each baseline (oriented so that > 1 means DTMExecutor
does better) and the goal with whether it is met. Speed is never asserted by the test suite:
this script only prints (``--quick`` is the short smoke run).

loky is optional (``pip install dtm_executor[bench]``): when it is missing its column says so
and the run goes on; so are numpy (transfer) and DEAP (deap).

The machine this was written on is shared: each case also reports how many cores *other*
processes kept busy while it was timed, so a slow number can be told from a busy machine.

    .venv/bin/python benchmarks/bench.py                 # everything once (about 2.5 minutes)
    .venv/bin/python benchmarks/bench.py --repeat 3      # medians of 3 interleaved runs + spread
    .venv/bin/python benchmarks/bench.py --quick         # small sizes: a smoke run (~30 s)
    .venv/bin/python benchmarks/bench.py --only submit,map --executors dtm,pool --json out.json

Cases: submit, map, makespan, efficiency, startup, import, deap, tree, transfer.
See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import multiprocessing
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import types
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from time import perf_counter
from typing import Any, Callable, Iterator

# numpy and DEAP are imported only by the cases that use them (transfer, deap), and by their
# workers: a big heap makes every full run of the cyclic garbage collector slower, for every
# executor alike, and would blur the per-task costs measured by the flat cases.
_DEAP_ENV = "DTM_BENCH_DEAP"  # set by the driver for the deap case; workers inherit it
creator: Any = None
if os.environ.get(_DEAP_ENV):
    try:  # optional (``pip install dtm_executor[bench]``)
        from deap import algorithms, base, creator, tools

        # Module level, so worker processes (which import this script as their main module) have them.
        if not hasattr(creator, "BenchFitnessMax"):
            creator.create("BenchFitnessMax", base.Fitness, weights=(1.0,))
            creator.create("BenchIndividual", list, fitness=creator.BenchFitnessMax)
    except ImportError:  # pragma: no cover
        creator = None

WORKERS = 2
NOISY = 0.5  # cores busy with other processes above which a timing says more about the machine

#: executors, in table order: DTMExecutor first, then the baselines
EXECUTORS = ("dtm", "pool", "ppe", "loky")
BASELINES = EXECUTORS[1:]
LABEL = {"dtm": "DTMExecutor", "pool": "mp.Pool", "ppe": "PPE", "loky": "loky", "serial": "builtin map"}
#: optional executors: the module each needs
OPTIONAL = {"loky": "loky"}

#: modules that cost start-up time and are only needed by some runs (the issue's list and a few
#: more); the startup and import cases report which of them are loaded, and when
HEAVY = ("cloudpickle", "mpi4py", "ssl", "numpy", "tqdm", "matplotlib", "multiprocessing",
         "concurrent.futures.process", "asyncio", "hashlib", "inspect", "dataclasses", "ast",
         "pickletools", "uuid", "platform", "difflib", "subprocess", "socket", "json", "pathlib")


# -- task functions (module level: workers import this script like multiprocessing spawn) ----
def noop(x: Any) -> Any:
    return x


def inc(x: int) -> int:
    return x + 1


#: repetitions of the short flat measurements (submit, map) in one process: their median is
#: reported (one measurement of 10-100 ms moves by tens of per cent on a shared machine)
REPS = 5
REPS_BUDGET = 3.0  # ... but no more repetitions once this many seconds were spent on one setting


def _fresh_copies(fn: Callable[..., Any], k: int) -> list[Callable[..., Any]]:
    """``k`` module-level copies of ``fn`` (``inc_0``, ``inc_1``...): each is new to DTMExecutor's
    map chunk sizer, which remembers per function, so repeated measurements all start cold.
    Module attributes, so they travel by reference (workers import this script)."""
    out = []
    for i in range(k):
        name = f"{fn.__name__}_{i}"
        f = globals().get(name)
        if f is None:
            f = types.FunctionType(fn.__code__, fn.__globals__, name, fn.__defaults__, fn.__closure__)
            f.__qualname__ = name
            globals()[name] = f
        out.append(f)
    return out


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
    from dtm_executor import current_executor

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


INC_COPIES = _fresh_copies(inc, REPS)


# -- the executors, behind one small interface ---------------------------------------------
class _PoolResult:
    """``multiprocessing.pool.AsyncResult`` with a future's ``result``."""

    __slots__ = ("result",)

    def __init__(self, r: Any) -> None:
        self.result = r.get


class _PoolExecutor:
    """``multiprocessing.Pool`` as the cases use executors: ``submit`` is ``apply_async``,
    ``map(chunksize=None)`` is ``Pool.map``'s own chunking (``divmod(len, 4 * workers)``)."""

    def __init__(self, n: int, method: str | None = None) -> None:
        ctx = multiprocessing.get_context(method)
        self.method = ctx.get_start_method()
        self.pool = ctx.Pool(n)

    def submit(self, fn: Callable[..., Any], *args: Any) -> _PoolResult:
        return _PoolResult(self.pool.apply_async(fn, args))

    def map(self, fn: Callable[..., Any], items: Any, chunksize: int | None = None) -> list[Any]:
        return self.pool.map(fn, items, chunksize)

    def __enter__(self) -> "_PoolExecutor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.pool.close()
        self.pool.join()


def make_executor(key: str) -> Any:
    """A fresh executor of kind ``key`` with `WORKERS` workers (a context manager)."""
    if key == "dtm":
        from dtm_executor import DTMExecutor

        return DTMExecutor(WORKERS, transport="local")
    if key == "pool":
        return _PoolExecutor(WORKERS)
    if key == "ppe":
        return ProcessPoolExecutor(WORKERS)
    if key == "loky":
        import loky

        return loky.ProcessPoolExecutor(WORKERS)
    raise ValueError(f"unknown executor {key!r}")


def ex_map(key: str, ex: Any, fn: Callable[..., Any], items: Any, chunksize: int | None) -> Iterator[Any]:
    """``ex.map`` with ``chunksize=None`` meaning each executor's default (PPE and loky: 1)."""
    if chunksize is None:
        return iter(ex.map(fn, items))
    return iter(ex.map(fn, items, chunksize=chunksize))


def default_chunking(key: str) -> str:
    return {"dtm": "adaptive", "pool": "len/(4 x workers)", "ppe": "1", "loky": "1"}[key]


def missing_reason(key: str) -> str | None:
    """Why executor ``key`` cannot run here (an optional package missing), or None."""
    mod = OPTIONAL.get(key)
    if mod is not None and importlib.util.find_spec(mod) is None:
        return f"not installed (pip install {mod}, or the package's bench extra)"
    return None


# -- reporting ---------------------------------------------------------------------------------
@dataclass
class Row:
    case: str
    ours: float | None  # DTMExecutor
    baseline: float | None  # base[ref]: the baseline the goal is stated against
    unit: str
    ratio: float | None  # ours against base[ref]; > 1: DTMExecutor does better
    target: str
    met: bool | None  # None: informational row
    notes: list[str] = field(default_factory=list)
    others: float | None = None  # cores other processes kept busy while timed (worst of all)
    base: dict[str, float | None] = field(default_factory=dict)  # baseline key -> its number
    ref: str = "pool"
    better: str = "higher"  # which way is better for this row's numbers: "higher" or "lower"
    ratios: dict[str, float | None] = field(default_factory=dict)  # baseline key -> ratio


def ratio_of(ours: float | None, theirs: float | None, better: str) -> float | None:
    """> 1 when ours is better."""
    if ours is None or theirs is None or ours <= 0 or theirs <= 0:
        return None
    return ours / theirs if better == "higher" else theirs / ours


def make_row(case: str, ours: float | None, base_: dict[str, float | None], unit: str, target: str,
             met: Callable[[Row], bool | None] | None, *, ref: str = "pool", better: str = "higher",
             notes: list[str] | None = None, others: float | None = None) -> Row:
    ratios = {k: ratio_of(ours, v, better) for k, v in base_.items()}
    r = Row(case, ours, base_.get(ref), unit, ratios.get(ref), target, None, list(notes or []), others,
            dict(base_), ref, better, ratios)
    if met is not None and ours is not None:
        try:
            r.met = met(r)
        except TypeError:  # a number it needs is missing
            r.met = None
    return r


def _fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "n/a"
    if unit == "MB/s":
        return f"{v:,.0f} MB/s"
    if unit == "s":
        return f"{v:.3f} s"
    if unit == "x":
        return f"{v:.3f}x"
    return f"{v:.3f}{(' ' + unit) if unit else ''}"


def _fmt_rate(v: float) -> str:
    if v >= 1e6:
        return f"{v / 1e6:.2f}M/s"
    if v >= 1e3:
        return f"{v / 1e3:.1f}k/s"
    return f"{v:.0f}/s"


def fmt(v: float | None, unit: str) -> str:
    if v is not None and unit in ("tasks/s", "items/s"):
        return _fmt_rate(v)
    return _fmt(v, unit)


def print_table(rows: list[Row], keys: tuple[str, ...] = EXECUTORS) -> None:
    bases = [k for k in keys if k != "dtm"]
    head = ("case", *(LABEL[k] for k in keys), *(f"vs {LABEL[k]}" for k in bases), "goal", "met?", "others")
    lines = []
    for r in rows:
        vals = [fmt(r.ours, r.unit) if "dtm" in keys else ""]
        vals += [fmt(r.base.get(k), r.unit) if k in r.base else "-" for k in bases]
        rat = ["n/a" if r.ratios.get(k) is None else f"{r.ratios[k]:.2f}" for k in bases]
        lines.append((
            r.case, *vals, *rat, r.target,
            "-" if r.met is None else ("yes" if r.met else "NO"),
            "" if r.others is None else f"{r.others:.2f}" + (" !" if r.others > NOISY else ""),
        ))
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(head)]
    sep = "  "
    print()
    print(sep.join(h.ljust(w) for h, w in zip(head, widths)))
    print(sep.join("-" * w for w in widths))
    for line in lines:
        print(sep.join(c.ljust(w) for c, w in zip(line, widths)))
    print("vs X: DTMExecutor's number against X's, oriented so that > 1 means DTMExecutor does better "
          "(for times: X / ours).")
    print(f"others: cores (of {os.cpu_count()}) that other processes kept busy while the case was timed "
          f"(the worst of its measurements); '!' above {NOISY}: the machine was too busy for a fair verdict.")
    notes = [(r.case, n) for r in rows for n in r.notes]
    if notes:
        print()
        for case, n in notes:
            print(f"[{case}] {n}")


def log(msg: str) -> None:
    print(msg, flush=True)


# -- measuring -------------------------------------------------------------------------------------
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


def _children_cpu() -> float:
    """CPU seconds of this process's children (and theirs) that exited and were waited for."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


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
    little about the executor. ``others`` = (machine busy CPU - this process tree's CPU) / wall,
    where the tree is the processes alive at the start plus the children waited for meanwhile.
    """

    def __enter__(self) -> "timed":
        self.pids = [os.getpid(), *_descendants(os.getpid())]
        self._ours = sum(_proc_cpu(p) for p in self.pids)
        self._kids = _children_cpu()
        self._machine, self._steal = _machine_cpu()
        self._t0 = perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.wall = perf_counter() - self._t0
        ours = (sum(_proc_cpu(p) for p in self.pids) - self._ours) / _HZ + (_children_cpu() - self._kids)
        machine, steal = _machine_cpu()
        self.ours_cpu = ours
        self.others = max(0.0, ((machine - self._machine) / _HZ - ours) / self.wall)
        self.steal = (steal - self._steal) / _HZ / self.wall


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else 0.5 * (xs[mid - 1] + xs[mid])


def _worst(*vals: float | None) -> float | None:
    got = [v for v in vals if v is not None]
    return max(got) if got else None


# -- cases -------------------------------------------------------------------------------------------
# Each case has ``measure(key, quick) -> dict`` (run in a fresh interpreter per executor ``key``;
# JSON-able) and ``rows(results, quick) -> [Row]`` (in the driver; ``results[key]`` is that dict,
# or ``{"error": text}`` for a missing, crashed or hung executor).
Results = dict[str, dict[str, Any]]


def _vals(results: Results, name: str, keys: tuple[str, ...] = BASELINES) -> dict[str, float | None]:
    return {k: results[k].get(name) for k in keys if k in results}


def _ours(results: Results, name: str) -> float | None:
    return results.get("dtm", {}).get(name)


def _others(results: Results, name: str = "others") -> float | None:
    return _worst(*(r.get(name) for r in results.values()))


def _error_notes(results: Results) -> list[str]:
    return [f"{LABEL.get(k, k)}: {r['error']}" for k, r in results.items() if "error" in r]


def _submit_n(quick: bool) -> int:
    return 500 if quick else 5000


def _repeat(measure: Callable[[int], timed], reps: int) -> tuple[list[float], list[float]]:
    """Run ``measure(i)`` up to ``reps`` times (fewer once `REPS_BUDGET` seconds are spent):
    (walls, others)."""
    walls: list[float] = []
    others: list[float] = []
    spent = 0.0
    for i in range(reps):
        t = measure(i)
        walls.append(t.wall)
        others.append(t.others)
        spent += t.wall
        if spent > REPS_BUDGET:
            break
    return walls, others


def measure_submit(key: str, quick: bool) -> dict[str, Any]:
    n = _submit_n(quick)
    with make_executor(key) as ex:
        warm(ex)

        def once(_: int) -> timed:
            with timed() as t:
                futs = [ex.submit(noop, i) for i in range(n)]
                total = sum(f.result() for f in futs)
            assert total == n * (n - 1) // 2
            return t

        walls, others = _repeat(once, 1 if quick else REPS)
    rates = [n / w for w in walls]
    return {"rate": _median(rates), "rates": rates, "others": _median(others)}


def rows_submit(results: Results, quick: bool) -> list[Row]:
    n = _submit_n(quick)
    spread = "; ".join(f"{LABEL[k]} " + ", ".join(_fmt_rate(v) for v in r["rates"])
                       for k, r in results.items() if "rates" in r)
    return [make_row(f"{n:,} x submit(no-op) + result", _ours(results, "rate"), _vals(results, "rate"),
                     "tasks/s", ">= 1.2x mp.Pool", lambda r: r.ratio >= 1.2,
                     notes=["mp.Pool: apply_async + get; median of the repetitions in one process: " + spread,
                            *_error_notes(results)],
                     others=_others(results))]


def _map_sizes(key: str, n: int, quick: bool) -> list[int | None]:
    """None first (the executor's default chunking, measured while DTM's sizer is cold), then
    fixed sizes, and mp.Pool's formula for the executors that do not use it by default."""
    sizes: list[int | None] = [None]
    fixed = [1, 100, 1000] if quick else [1, 10, 100, 1000, 10000]
    formula = -(-n // (4 * WORKERS))  # Pool.map's divmod(len, 4 * workers), rounded up
    if key in ("ppe", "loky"):
        fixed = [c for c in fixed if c != 1]  # their default is 1: measured already
    if key != "pool" and formula not in fixed:
        fixed.append(formula)
    return sizes + fixed


def _map_n(quick: bool) -> int:
    return 10_000 if quick else 100_000


def measure_map(key: str, quick: bool) -> dict[str, Any]:
    n = _map_n(quick)
    expect = n * (n + 1) // 2
    out: dict[str, Any] = {"by_chunksize": {}, "others_by": {}, "reps_by": {}}
    with make_executor(key) as ex:
        warm(ex)
        for c in _map_sizes(key, n, quick):

            def once(i: int, c: int | None = c) -> timed:
                with timed() as t:  # a function new to the executor each time (cold chunk sizer)
                    total = sum(ex_map(key, ex, INC_COPIES[i], range(n), c))
                assert total == expect
                return t

            walls, others = _repeat(once, 1 if quick else REPS)
            label = "default" if c is None else str(c)
            out["by_chunksize"][label] = n / _median(walls)
            out["others_by"][label] = _median(others)
            out["reps_by"][label] = [n / w for w in walls]
    by = out["by_chunksize"]
    out["default"] = by["default"]
    out["default_reps"] = out["reps_by"]["default"]
    best = max(by, key=lambda c: by[c])
    out["best"], out["best_chunksize"] = by[best], best
    out["others"] = out["others_by"]["default"]
    out["others_best"] = out["others_by"][best]
    return out


def rows_map(results: Results, quick: bool) -> list[Row]:
    n = _map_n(quick)
    ok = {k: r for k, r in results.items() if "error" not in r}
    chunk_notes = [
        f"{LABEL[k]} items/s by chunksize: "
        + ", ".join(f"{c}{' (' + default_chunking(k) + ')' if c == 'default' else ''} {_fmt_rate(v)}"
                    for c, v in r["by_chunksize"].items())
        for k, r in ok.items()
    ]
    best_notes = [", ".join(f"{LABEL[k]} best at chunksize {r['best_chunksize']}" for k, r in ok.items())]
    return [
        make_row(f"map {n:,} trivial, default chunking", _ours(results, "default"),
                 _vals(results, "default"), "items/s", ">= 1.2x mp.Pool", lambda r: r.ratio >= 1.2,
                 notes=[f"defaults: {', '.join(f'{LABEL[k]} {default_chunking(k)}' for k in results)}; "
                        "median of the repetitions in one process (each with a function new to the executor): "
                        + "; ".join(f"{LABEL[k]} " + ", ".join(_fmt_rate(v) for v in r["default_reps"])
                                    for k, r in ok.items()),
                        *_error_notes(results)],
                 others=_others(results)),
        make_row(f"map {n:,} trivial, best chunksize tried", _ours(results, "best"),
                 _vals(results, "best"), "items/s", ">= 0.9x mp.Pool best", lambda r: r.ratio >= 0.9,
                 notes=best_notes + chunk_notes, others=_others(results, "others_best")),
    ]


def _makespan_durs(quick: bool) -> list[float]:
    rng = random.Random(12345)
    return [rng.expovariate(1 / 0.010) for _ in range(80 if quick else 400)]


def measure_makespan(key: str, quick: bool) -> dict[str, Any]:
    durs = _makespan_durs(quick)
    with make_executor(key) as ex:
        warm(ex)
        with timed() as t:
            futs = [ex.submit(timed_busy, d) for d in durs]
            measured = [f.result() for f in futs]
    lb = max(sum(measured) / WORKERS, max(measured))
    return {"x": t.wall / lb, "wall": t.wall, "lb": lb, "others": t.others}


def rows_makespan(results: Results, quick: bool) -> list[Row]:
    durs = _makespan_durs(quick)
    walls = [f"{LABEL[k]} {r['wall']:.3f}/{r['lb']:.3f} s" for k, r in results.items() if "error" not in r]
    return [make_row(f"{len(durs)} tasks exp(10 ms): makespan/LB", _ours(results, "x"), _vals(results, "x"),
                     "x", "<= 1.03", lambda r: r.ours <= 1.03, better="lower",
                     notes=[f"wall/lower bound: {', '.join(walls)}; LB = max(sum/{WORKERS}, longest) of "
                            f"in-task durations; seed 12345, total {sum(durs):.3f} s, longest "
                            f"{max(durs) * 1000:.1f} ms", *_error_notes(results)],
                     others=_others(results))]


def _eff_n(quick: bool) -> tuple[int, float]:
    return (40, 0.02) if quick else (200, 0.02)


def measure_efficiency(key: str, quick: bool) -> dict[str, Any]:
    n, dur = _eff_n(quick)
    with make_executor(key) as ex:
        warm(ex)
        with timed() as t:
            futs = [ex.submit(timed_busy, dur) for _ in range(n)]
            busy_sum = sum(f.result() for f in futs)
    return {"eff": busy_sum / (WORKERS * t.wall), "others": t.others}


def rows_efficiency(results: Results, quick: bool) -> list[Row]:
    n, dur = _eff_n(quick)
    return [make_row(f"{n} x {dur * 1000:.0f} ms CPU: parallel efficiency", _ours(results, "eff"),
                     _vals(results, "eff"), "", ">= 0.98", lambda r: r.ours >= 0.98,
                     notes=[f"efficiency = sum of in-task durations / ({WORKERS} x wall)",
                            *_error_notes(results)],
                     others=_others(results))]


def _tree_depth(quick: bool) -> int:
    return 6 if quick else 10


def measure_tree(key: str, quick: bool) -> dict[str, Any]:
    depth = _tree_depth(quick)
    leaf = 0.001
    ideal = (2 ** depth) * leaf / WORKERS
    with make_executor(key) as ex:
        warm(ex)
        ex.submit(tree, 3, leaf).result()  # warm the nesting path too
        with timed() as t:
            leaves, peaks = ex.submit(tree, depth, leaf).result()
        with timed() as t0:  # the same tree with empty leaves: what the scheduling alone costs
            ex.submit(tree, depth, 0.0).result()
    assert leaves == 2 ** depth
    return {"x": t.wall / ideal, "wall": t.wall, "ideal": ideal, "cpu": t.ours_cpu, "empty": t0.wall,
            "peaks": {str(p): n for p, n in sorted(peaks.items())}, "others": t.others}


def rows_tree(results: Results, quick: bool) -> list[Row]:
    depth = _tree_depth(quick)
    r = results.get("dtm", {})
    notes = _error_notes(results)
    if "x" in r:
        notes = [f"wall {r['wall']:.3f} s vs ideal {r['ideal']:.3f} s ({2 ** depth} leaves x 1 ms / {WORKERS}); "
                 f"our processes used {r['cpu']:.2f} CPU-s; the same tree with 0 ms leaves took "
                 f"{r['empty']:.3f} s ({r['empty'] / (2 ** (depth + 1) - 1) * 1e6:.0f} us of wall per task)",
                 "peak threading.active_count() per worker process: "
                 + ", ".join(f"pid {p}: {n}" for p, n in r["peaks"].items())] + notes
    notes.append("baselines: n/a (a task cannot submit to its own pool: waiting tasks would block every worker)")
    return [make_row(f"tree depth {depth}, 1 ms leaves: wall/ideal", r.get("x"), {}, "x", "<= 1.2",
                     lambda row: row.ours <= 1.2, better="lower", notes=notes, others=r.get("others"))]


def _trips(quick: bool) -> int:
    return 3 if quick else 20


def measure_transfer(key: str, quick: bool) -> dict[str, Any]:
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        return {"error": "numpy missing"}
    trips = _trips(quick)
    nbytes = 25_000_000
    arr = np.random.default_rng(0).random(nbytes // 8)
    small = arr[: 1 << 17].copy()
    with make_executor(key) as ex:
        warm(ex)
        ex.submit(noop, small).result()
        with timed() as t:
            for _ in range(trips):
                out = ex.submit(noop, arr).result()
    assert out.shape == arr.shape and out[-1] == arr[-1]
    return {"rate": trips * nbytes / 1e6 / t.wall, "others": t.others}


def rows_transfer(results: Results, quick: bool) -> list[Row]:
    return [make_row(f"{_trips(quick)} round trips of a 25 MB array", _ours(results, "rate"),
                     _vals(results, "rate"), "MB/s", ">= 3x PPE", lambda r: r.ratio >= 3, ref="ppe",
                     notes=["MB/s = trips x 25 MB / wall (each trip moves the array there and back)",
                            *_error_notes(results)],
                     others=_others(results))]


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


def _deap_size(quick: bool) -> tuple[int, int]:
    return (60, 3) if quick else (300, 10)


def measure_deap(key: str, quick: bool) -> dict[str, Any]:
    if creator is None:
        return {"error": "deap missing"}
    pop, ngen = _deap_size(quick)
    if key == "serial":
        ts, best = _onemax(map, pop, ngen)
        tfree, best_free = _onemax(map, pop, ngen, eval_onemax_free)
        assert best == best_free
        return {"wall": ts.wall, "free": tfree.wall, "best": best, "others": _worst(ts.others, tfree.others)}
    with make_executor(key) as ex:
        warm(ex)
        t, best = _onemax(ex.map, pop, ngen)
    return {"wall": t.wall, "best": best, "others": t.others}


def rows_deap(results: Results, quick: bool) -> list[Row]:
    pop, ngen = _deap_size(quick)
    ser = results.get("serial", {})
    notes = _error_notes(results)
    speed: dict[str, float | None] = {}
    bound = None
    if "wall" in ser:
        for k, r in results.items():
            if k != "serial":
                speed[k] = ser["wall"] / r["wall"] if "wall" in r else None
        # Amdahl: the GA's own work (free) stays serial; only the evaluations (wall - free) spread.
        evals = max(0.0, ser["wall"] - ser["free"])
        bound = ser["wall"] / (ser["free"] + evals / WORKERS)
        walls = ", ".join(f"{LABEL[k]} {r['wall']:.3f} s" for k, r in results.items() if "wall" in r)
        notes.insert(0, f"walls: {walls}; GA's serial work (free evaluation) {ser['free']:.3f} s -> Amdahl "
                        f"bound on {WORKERS} workers: {bound:.3f}x; of that bound: "
                        + ", ".join(f"{LABEL[k]} {v / bound:.0%}" for k, v in speed.items() if v))
        bests = {r.get("best") for r in results.values() if "best" in r}
        if len(bests) > 1:
            notes.append(f"DIFFERENT best fitnesses: {sorted(bests)}")
    ours = speed.pop("dtm", None)
    return [make_row(f"DEAP OneMax pop {pop} x {ngen} gen, 1 ms eval: speedup", ours,
                     {k: speed.get(k) for k in BASELINES if k in results}, "x",
                     ">= 95% Amdahl & >= mp.Pool",
                     lambda r: r.ours >= 0.95 * bound and r.ratio >= 1.0,  # type: ignore[operator]
                     notes=notes, others=_others(results))]


_STARTUP_SCRIPT = textwrap.dedent(
    """
    import os, sys, time

    T0 = float(os.environ["DTM_BENCH_T0"])
    HEAVY = {heavy!r}


    def one():
        import sys
        return [m for m in HEAVY if m in sys.modules]


    def heavy():
        return [m for m in HEAVY if m in sys.modules]


    if __name__ == "__main__":
        up = time.monotonic() - T0
        kind, method = sys.argv[1], sys.argv[2] or None
        before = heavy()
        if kind == "dtm":
            from dtm_executor import DTMExecutor
            imported = time.monotonic() - T0
            mods_import = heavy()
            ex = DTMExecutor(2, transport="local")
        elif kind == "pool":
            import multiprocessing as mp
            imported = time.monotonic() - T0
            mods_import = heavy()
            ex = mp.get_context(method).Pool(2)
        elif kind == "ppe":
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor
            imported = time.monotonic() - T0
            mods_import = heavy()
            ex = ProcessPoolExecutor(2, mp_context=mp.get_context(method))
        else:
            import loky
            imported = time.monotonic() - T0
            mods_import = heavy()
            ex = loky.ProcessPoolExecutor(2)
        created = time.monotonic() - T0
        mods_created = heavy()
        if kind == "pool":
            worker_mods = ex.apply_async(one).get()
        else:
            worker_mods = ex.submit(one).result()
        first = time.monotonic() - T0
        mods_first = heavy()
        import json
        print(json.dumps(dict(up=up, imported=imported, created=created, first=first, before=before,
                              mods_import=mods_import, mods_created=mods_created,
                              mods_first=mods_first, worker_mods=worker_mods)), flush=True)
        if kind == "pool":
            ex.close()
            ex.join()
        else:
            ex.shutdown()
    """
)


def _startup_once(path: str, kind: str, method: str) -> dict[str, Any]:
    env = dict(os.environ)
    t0 = time.monotonic()  # CLOCK_MONOTONIC: comparable across processes on Linux
    env["DTM_BENCH_T0"] = repr(t0)
    out = subprocess.run([sys.executable, path, kind, method], env=env, capture_output=True, text=True,
                         timeout=60, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    got["whole"] = time.monotonic() - t0
    return got


#: start methods tried per executor: the default first (the row's number), then the others
_METHODS = {"dtm": [""], "pool": ["", "spawn", "forkserver"], "ppe": ["", "spawn"], "loky": [""]}


def measure_startup(key: str, quick: bool) -> dict[str, Any]:
    reps = 1 if quick else 5
    out: dict[str, Any] = {"by_method": {}}
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "startup_probe.py")
        with open(path, "w") as f:
            f.write(_STARTUP_SCRIPT.replace("{heavy!r}", repr(HEAVY)))
        with timed() as t:
            for method in _METHODS[key]:
                got = [_startup_once(path, key, method) for _ in range(reps)]
                med = {k: _median([g[k] for g in got]) for k in ("up", "imported", "created", "first", "whole")}
                name = (method or multiprocessing.get_start_method()) if key in ("pool", "ppe") else key
                med["name"] = name
                for k in ("before", "mods_import", "mods_created", "mods_first", "worker_mods"):
                    med[k] = got[-1][k]
                out["by_method"][method or "default"] = med
    out["first"] = out["by_method"]["default"]["first"]
    out["others"] = t.others
    return out


def rows_startup(results: Results, quick: bool) -> list[Row]:
    reps = 1 if quick else 5
    notes = [f"median of {reps} fresh `python probe.py` each; seconds since the parent launched it: "
             "interpreter up / executor module imported / executor created / first result (whole run "
             "incl. shutdown)"]
    for k, r in results.items():
        for m, v in r.get("by_method", {}).items():
            notes.append(f"{LABEL[k]}{'' if m == 'default' and k in ('dtm', 'loky') else ' ' + v['name']}: "
                         f"{v['up']:.3f} / {v['imported']:.3f} / {v['created']:.3f} / {v['first']:.3f} s "
                         f"({v['whole']:.3f} s); created -> first result {v['first'] - v['created']:.3f} s")
    d = results.get("dtm", {}).get("by_method", {}).get("default")
    if d:
        notes.append("heavy modules in the DTMExecutor probe (of " + ", ".join(HEAVY) + "): "
                     f"at start {d['before']}; after `import dtm_executor` +{_new(d['before'], d['mods_import'])}; "
                     f"after DTMExecutor() +{_new(d['mods_import'], d['mods_created'])}; at the first result "
                     f"+{_new(d['mods_created'], d['mods_first'])}; in the worker at its first task "
                     f"{d['worker_mods']}")
    notes += _error_notes(results)
    return [make_row("process start -> first result", _ours(results, "first"), _vals(results, "first"), "s",
                     "<= mp.Pool", lambda r: r.ratio >= 1.0, better="lower", notes=notes,
                     others=_others(results))]


def _new(before: list[str], after: list[str]) -> list[str]:
    return [m for m in after if m not in before]


#: what each executor needs imported before its first use
_IMPORT = {"dtm": "import dtm_executor", "pool": "import multiprocessing.pool",
           "ppe": "import concurrent.futures.process", "loky": "import loky"}


def _time_cmd(cmd: list[str]) -> float:
    t0 = time.monotonic()
    subprocess.run(cmd, check=True, timeout=60, capture_output=True)
    return time.monotonic() - t0


def _importtime(stmt: str) -> dict[str, tuple[int, int]]:
    """``-X importtime`` of ``stmt`` in a fresh interpreter: module -> (self us, cumulative us)."""
    err = subprocess.run([sys.executable, "-X", "importtime", "-c", stmt], capture_output=True, text=True,
                         timeout=60, check=True).stderr
    out: dict[str, tuple[int, int]] = {}
    for line in err.splitlines():
        parts = line.partition("import time:")[2].split("|")
        if len(parts) != 3:
            continue
        try:
            out[parts[2].strip()] = (int(parts[0]), int(parts[1]))
        except ValueError:  # the header line
            continue
    return out


def measure_import(key: str, quick: bool) -> dict[str, Any]:
    reps = 3 if quick else 11
    stmt = _IMPORT[key]
    with timed() as t:
        bare, imp = [], []
        for _ in range(reps):  # interleaved, so both see the same machine
            bare.append(_time_cmd([sys.executable, "-c", "pass"]))
            imp.append(_time_cmd([sys.executable, "-c", stmt]))
        base_mods = set(_importtime("pass"))
        runs = [_importtime(stmt) for _ in range(1 if quick else 3)]
    best = {m: min((r[m] for r in runs if m in r), key=lambda v: v[1]) for m in runs[0]}
    new = {m: v for m, v in best.items() if m not in base_mods}
    top = sorted(new.items(), key=lambda kv: -kv[1][0])[:12]
    mod = stmt.split()[-1]
    out = {"added": max(0.0, _median(imp) - _median(bare)), "bare": _median(bare),
           "cumulative": best.get(mod, (0, 0))[1] / 1e6, "nmods": len(new),
           "heavy": [m for m in HEAVY if m in new], "top_self": [(m, v[0]) for m, v in top],
           "others": t.others}
    if key == "dtm":
        out["from_source"] = _import_from_source(1 if quick else 3)
    return out


def _import_from_source(reps: int) -> float:
    """-X importtime cumulative of ``import dtm_executor`` from a copy of its sources without
    ``.pyc`` files (what every process pays when bytecode is not written, as with an editable
    install under PYTHONDONTWRITEBYTECODE=1), best of ``reps``, seconds."""
    import shutil

    import dtm_executor

    src = os.path.dirname(dtm_executor.__file__)
    with tempfile.TemporaryDirectory() as d:
        shutil.copytree(src, os.path.join(d, "dtm_executor"), ignore=shutil.ignore_patterns("__pycache__"))
        env = dict(os.environ, PYTHONPATH=d, PYTHONDONTWRITEBYTECODE="1")
        best = math.inf
        for _ in range(reps):
            err = subprocess.run([sys.executable, "-X", "importtime", "-c", "import dtm_executor"], env=env,
                                 cwd=d, capture_output=True, text=True, timeout=60, check=True).stderr
            for line in err.splitlines():
                parts = line.split("|")
                if len(parts) == 3 and parts[2].strip() == "dtm_executor":
                    best = min(best, int(parts[1]) / 1e6)
    return best


def rows_import(results: Results, quick: bool) -> list[Row]:
    notes = []
    for k, r in results.items():
        if "added" in r:
            notes.append(f"{LABEL[k]} `{_IMPORT[k]}`: +{r['added'] * 1000:.0f} ms over `python -c pass` "
                         f"({r['bare'] * 1000:.0f} ms); -X importtime cumulative {r['cumulative'] * 1000:.1f} ms, "
                         f"{r['nmods']} modules; heavy: {r['heavy']}")
    d = results.get("dtm", {})
    if "from_source" in d:
        notes.append(f"`import dtm_executor` compiled from source (no .pyc files): -X importtime cumulative "
                     f"{d['from_source'] * 1000:.1f} ms")
    if "top_self" in d:
        notes.append("`import dtm_executor`, largest self times (us, best of the -X importtime runs): "
                     + ", ".join(f"{m} {us}" for m, us in d["top_self"]))
    notes += _error_notes(results)
    return [make_row("import time added, s", _ours(results, "added"), _vals(results, "added"), "s",
                     "info", None, better="lower", notes=notes, others=_others(results))]


@dataclass
class Case:
    measure: Callable[[str, bool], dict[str, Any]]
    rows: Callable[[Results, bool], list[Row]]
    executors: tuple[str, ...] = EXECUTORS


CASES: dict[str, Case] = {
    "submit": Case(measure_submit, rows_submit),
    "map": Case(measure_map, rows_map),
    "makespan": Case(measure_makespan, rows_makespan),
    "efficiency": Case(measure_efficiency, rows_efficiency),
    "startup": Case(measure_startup, rows_startup),
    "import": Case(measure_import, rows_import),
    "deap": Case(measure_deap, rows_deap, ("serial", *EXECUTORS)),
    "tree": Case(measure_tree, rows_tree, ("dtm",)),
    "transfer": Case(measure_transfer, rows_transfer),
}


# -- the driver ----------------------------------------------------------------------------------
def _child(name: str, key: str, quick: bool) -> int:
    """Measure one case with one executor in this (child) process; print it as JSON last."""
    got = CASES[name].measure(key, quick)
    print("RESULT " + json.dumps(got), flush=True)
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


def child_env(keep_env: bool) -> dict[str, str]:
    """The environment of the measured processes. Unless ``keep_env``, without
    ``PYTHONDONTWRITEBYTECODE``: with it, a package installed in development mode (``pip install
    -e``, as here) has no ``.pyc`` files, so every worker would compile dtm_executor from source,
    while the baselines' modules (the standard library, loky from a wheel) were compiled when they
    were installed. Users of a wheel have the ``.pyc`` files too."""
    env = dict(os.environ)
    if not keep_env:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def warm_bytecode(env: dict[str, str]) -> None:
    """Import what the measured processes import once, so that their ``.pyc`` files exist."""
    mods = ["dtm_executor", "dtm_executor._transports.local", "multiprocessing.pool", "concurrent.futures.process"]
    mods += [m for m in ("loky", "numpy", "deap.algorithms") if importlib.util.find_spec(m.split(".")[0])]
    subprocess.run([sys.executable, "-c", "; ".join(f"import {m}" for m in mods)], env=env, timeout=120,
                   check=False, capture_output=True)


def _run_one(name: str, key: str, quick: bool, timeout: float,
             env: dict[str, str] | None = None) -> dict[str, Any]:
    """One case, one executor, in a fresh interpreter: no state (threads, chunk-size memory,
    pools) leaks from one measurement to the next, and a hang is reported instead of stalling."""
    why = missing_reason(key)
    if why is not None:
        return {"error": why}
    cmd = [sys.executable, os.path.abspath(__file__), "--case", name, "--executor", key]
    cmd += ["--quick"] if quick else []
    if name == "deap":  # this script imports DEAP (here and in the workers) only for that case
        env = dict(os.environ if env is None else env, **{_DEAP_ENV: "1"})
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
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
        path = os.path.join(tempfile.gettempdir(), f"dtm-bench-hung-{name}-{key}-{proc.pid}.txt")
        with open(path, "w") as f:
            f.write(stacks)
        return {"error": f"TIMEOUT after {timeout:.0f} s (stacks in {path})", "broken": True}
    for line in out.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    print(out)
    return {"error": f"FAILED (exit status {proc.returncode})", "broken": True}


def _aggregate(runs: list[list[Row]]) -> list[Row]:
    """Several runs of one case: the medians, with the spread in a note (goals judged on them)."""
    if len(runs) == 1:
        return runs[0]
    out: list[Row] = []
    for i, first in enumerate(runs[0]):
        same = [r[i] for r in runs if len(r) > i and r[i].case == first.case]
        if len(same) != len(runs) or any(r.ours is None for r in same):
            out.extend(r[i] for r in runs if len(r) > i)
            continue

        def med(vals: list[float | None]) -> float | None:
            got = [v for v in vals if v is not None]
            return _median(got) if got else None

        base_ = {k: med([r.base.get(k) for r in same]) for k in first.base}
        agg = Row(first.case, med([r.ours for r in same]), None, first.unit, None, first.target, None, [],
                  med([r.others for r in same]), base_, first.ref, first.better,
                  {k: med([r.ratios.get(k) for r in same]) for k in first.ratios})
        agg.baseline = base_.get(first.ref)
        agg.ratio = agg.ratios.get(first.ref)
        mets = [r.met for r in same]
        if any(m is not None for m in mets):
            agg.met = sorted(mets, key=lambda m: (m is not None, m))[len(mets) // 2]  # median run's verdict
        spread = f"{len(runs)} runs: DTMExecutor {', '.join(fmt(r.ours, first.unit) for r in same)}"
        for k in first.base:
            spread += f"; {LABEL[k]} {', '.join(fmt(r.base.get(k), first.unit) for r in same)}"
        if any(m is not None for m in mets):
            spread += f"; goal met in {sum(1 for m in mets if m)}/{len(runs)}"
        agg.notes.append(spread)
        common = [n for n in first.notes if all(n in r.notes for r in same)]
        agg.notes.extend(common)
        for k, r in enumerate(same):
            agg.notes.extend(f"run {k + 1}: {n}" for n in r.notes if n not in common)
        out.append(agg)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    p.add_argument("--only", default="", help=f"comma-separated cases among {', '.join(CASES)}")
    p.add_argument("--executors", default="",
                   help=f"comma-separated executors among {', '.join(EXECUTORS)} (default: all)")
    p.add_argument("--repeat", type=int, default=1,
                   help="run every case this many times (interleaved); report medians and spread")
    p.add_argument("--json", default="", help="also write the rows to this JSON file")
    p.add_argument("--timeout", type=float, default=0.0,
                   help="seconds allowed per case and executor (default 60 with --quick, else 180)")
    p.add_argument("--keep-env-bytecode", action="store_true",
                   help="keep PYTHONDONTWRITEBYTECODE if the environment sets it: an editable install "
                        "of dtm_executor that has no .pyc files yet is then compiled from source by every "
                        "process (.pyc files written by an earlier run are still used; the import case "
                        "always reports the from-source cost)")
    p.add_argument("--case", default="", help=argparse.SUPPRESS)  # internal: measure one case here
    p.add_argument("--executor", default="", help=argparse.SUPPRESS)  # ... with this executor
    args = p.parse_args(argv)
    if args.case:
        return _child(args.case, args.executor, args.quick)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(CASES)
    unknown = [n for n in names if n not in CASES]
    if unknown:
        p.error(f"unknown case(s) {unknown}; choose among {list(CASES)}")
    keys = tuple(k.strip() for k in args.executors.split(",") if k.strip()) or EXECUTORS
    bad = [k for k in keys if k not in EXECUTORS]
    if bad:
        p.error(f"unknown executor(s) {bad}; choose among {list(EXECUTORS)}")
    timeout = args.timeout or (60.0 if args.quick else 180.0)
    try:
        load = os.getloadavg()
    except OSError:  # pragma: no cover
        load = (math.nan,) * 3
    missing = {k: missing_reason(k) for k in keys if missing_reason(k)}
    env = child_env(args.keep_env_bytecode)
    if env.get("PYTHONDONTWRITEBYTECODE"):
        bytecode = "PYTHONDONTWRITEBYTECODE kept: modules without .pyc files are compiled at every import"
    else:
        bytecode = ".pyc files written and used" + (
            " (PYTHONDONTWRITEBYTECODE removed for the measured processes)"
            if os.environ.get("PYTHONDONTWRITEBYTECODE") else "")
        warm_bytecode(env)
    log(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs, "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {WORKERS} workers each; "
        f"start method {multiprocessing.get_start_method()} (mp.Pool, PPE)"
        f"{'; QUICK sizes' if args.quick else ''}{f'; {args.repeat} runs per case' if args.repeat > 1 else ''}")
    log(f"bytecode: {bytecode}")
    for k, why in missing.items():
        log(f"  {LABEL[k]}: {why}; its column says n/a")
    runs: dict[str, list[list[Row]]] = {n: [] for n in names}
    raw: dict[str, list[Results]] = {n: [] for n in names}
    broken = False
    start = perf_counter()
    for rep in range(max(1, args.repeat)):
        for name in names:
            t0 = perf_counter()
            case = CASES[name]
            order = [k for k in case.executors if k in keys or k == "serial"]
            if rep % 2:  # alternate the order, so that drift in the machine's load evens out
                order.reverse()
            results: Results = {}
            for k in order:
                results[k] = _run_one(name, k, args.quick, timeout, env)
                broken = broken or bool(results[k].get("broken"))
            results = {k: results[k] for k in case.executors if k in results}  # table order
            raw[name].append(results)
            runs[name].append(case.rows(results, args.quick))
            log(f"  {name}{f' (run {rep + 1})' if args.repeat > 1 else ''}: done in {perf_counter() - t0:.1f} s")
    rows = [r for name in names for r in _aggregate(runs[name])]
    if args.quick:  # the goals are stated for the full sizes: small ones only smoke-test
        for r in rows:
            r.met = None
    print_table(rows, keys)
    if args.quick:
        log("QUICK sizes: the goals apply to the full sizes only (met? left blank).")
    log(f"\ntotal {perf_counter() - start:.1f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"quick": args.quick, "load": load, "bytecode": bytecode, "rows": [asdict(r) for r in rows],
                       "runs": {n: [[asdict(r) for r in rs] for rs in v] for n, v in runs.items()},
                       "measurements": raw}, f, indent=1)
    return 1 if broken else 0  # a missed goal is not an error: only hangs and crashes are


if __name__ == "__main__":
    sys.exit(main())

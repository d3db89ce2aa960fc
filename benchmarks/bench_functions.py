"""What sending functions as they are costs: ``submit`` of a closure against a module-level
function, in the same run (issue 8, items 6 and 9).

A module-level function travels by reference and is pickled once per process; a closure (or a
partial, a callable object, a function of an interactive ``__main__``) is pickled again at every
``submit`` so that it carries its current captured values, and identical bytes are sent and
unpickled once. The table gives, per case, the cost per ``submit`` call alone, the round-trip
throughput (submit everything, then wait), and the ratio to the module-level baseline (> 1: slower
than the baseline).

``--results`` adds the cost of the rule "a result is valid on every rank or on none": results that
never travel (a child run inline by its submitter, rank 0's own tasks under MPI) are pickled once
to check them, except atoms (``int``, ``float``, ``str``...).

    .venv/bin/python benchmarks/bench_functions.py            # about 20 s
    .venv/bin/python benchmarks/bench_functions.py --n 20000 --results

Speed is never asserted anywhere: this only prints.
"""

from __future__ import annotations

import argparse
import functools
from concurrent.futures import wait
from time import perf_counter
from typing import Any, Callable

from dtm_executor import DTMExecutor, current_executor


def inc(x: int) -> int:
    return x + 1


def make_closure(k: int) -> Callable[[int], int]:
    weights = [1.0] * 10

    def score(x: int) -> int:
        return x + k + int(weights[0])

    return score


def add(a: int, b: int) -> int:
    return a + b


def _submit_case(ex: DTMExecutor, n: int, fn_for: Callable[[int], Callable[[int], int]]) -> tuple[float, float]:
    """(microseconds per submit call, tasks per second round trip)."""
    fns = [fn_for(i) for i in range(n)]  # made before timing: only submit is measured
    t0 = perf_counter()
    futs = [ex.submit(fns[i], i) for i in range(n)]
    t1 = perf_counter()
    wait(futs)
    t2 = perf_counter()
    for f in futs:
        f.result()
    return (t1 - t0) / n * 1e6, n / (t2 - t0)


def inline_children(n: int, size: int) -> int:
    """Children that return a list of ``size`` floats, run inline by this task."""
    ex = current_executor()
    total = 0
    for _ in range(n):
        total += len(ex.submit(_floats, size).result())
    return total


def _floats(size: int) -> list[float]:
    return [1.0] * size


def tree(depth: int) -> int:
    if depth == 0:
        return 1
    ex = current_executor()
    a = ex.submit(tree, depth - 1)
    b = ex.submit(tree, depth - 1)
    return a.result() + b.result()


def tree_lists(depth: int) -> list[float]:
    if depth == 0:
        return [1.0] * 3
    ex = current_executor()
    a = ex.submit(tree_lists, depth - 1)
    b = ex.submit(tree_lists, depth - 1)
    return [x + y for x, y in zip(a.result(), b.result())]


def _timed(fn: Callable[[], Any]) -> float:
    t0 = perf_counter()
    fn()
    return perf_counter() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=10_000, help="submits per case (default 10000)")
    p.add_argument("--repeat", type=int, default=3, help="runs per case; the best is shown")
    p.add_argument("--results", action="store_true", help="also time the result-validity check")
    args = p.parse_args()
    n = args.n
    one_closure = make_closure(1)
    cases: list[tuple[str, Callable[[int], Callable[[int], int]]]] = [
        ("module-level function (baseline)", lambda i: inc),
        ("one closure, unchanged", lambda i: one_closure),
        ("a fresh closure per submit", make_closure),
        ("a partial of a module function", lambda i: functools.partial(add, 1)),
    ]
    with DTMExecutor(2) as ex:
        list(ex.map(inc, range(100)))  # warm up
        rows = []
        for name, fn_for in cases:
            best = min((_submit_case(ex, n, fn_for) for _ in range(args.repeat)), key=lambda r: r[0])
            rows.append((name, *best))
        base_us, base_rate = rows[0][1], rows[0][2]
        print(f"{n} submits per case, best of {args.repeat}, 2 local workers")
        print(f"{'case':36} {'us/submit':>10} {'x base':>7} {'tasks/s':>9} {'x base':>7}")
        for name, us, rate in rows:
            print(f"{name:36} {us:10.1f} {us / base_us:7.2f} {rate:9.0f} {base_rate / rate:7.2f}")
        if args.results:
            m = 2000
            print(f"\nnested children run inline, {m} per task (result-validity check included):")
            for size in (1, 100, 10_000):
                t0 = perf_counter()
                assert ex.submit(inline_children, m, size).result() == m * size
                dt = perf_counter() - t0
                print(f"  list of {size:>6} floats: {dt / m * 1e6:8.1f} us per child")
            depth = 14
            for fn in (tree, tree_lists):
                best = min(_timed(lambda fn=fn: ex.submit(fn, depth).result()) for _ in range(5))
                print(f"  binary tree of depth {depth}, {fn.__name__}: {best / 2 ** (depth + 1) * 1e6:.2f} us "
                      "per task (best of 5)")
    if args.results:
        _micro_results()
    return 0


def _micro_results() -> None:
    """The check alone, per value (when a result does not travel)."""
    try:
        from dtm_executor._serial import as_if_moved
    except ImportError:
        print("\n(this version has no result-validity check)")
        return
    values: list[tuple[str, Any]] = [
        ("int", 7), ("tuple (3.0,)", (3.0,)), ("list of 100 floats", [1.0] * 100),
        ("list of 10000 floats", [1.0] * 10_000), ("dict of 100 str->int", {str(i): i for i in range(100)}),
    ]
    try:
        import numpy as np

        values.append(("numpy array 25 MB", np.ones(25_000_000 // 8)))
    except ImportError:  # pragma: no cover
        pass
    print("\nthe check alone (as_if_moved), per result:")
    for name, v in values:
        reps = 20 if name.startswith("numpy") else 2000
        t0 = perf_counter()
        for _ in range(reps):
            as_if_moved(lambda: "task", 0, False, True, v)
        print(f"  {name:24} {(perf_counter() - t0) / reps * 1e6:10.2f} us")


if __name__ == "__main__":
    raise SystemExit(main())

"""Fibonacci with every call a task: the smallest program that nests tasks deeply.

Each ``fib(n)`` submits ``fib(n-1)`` and ``fib(n-2)`` to `current_executor()` and waits on
them. Inside a task, such a wait never blocks the worker: a child still queued locally runs
inline, otherwise the worker takes other work meanwhile. So this neither deadlocks nor grows a
thread per waiting task, whatever the depth and however few workers there are.

Run it with ``python examples/nested_fib.py [n] [--workers N]``.
"""

from __future__ import annotations

import argparse
import time

from dtm_executor import DTMExecutor, current_executor


def fib(n: int) -> int:
    if n < 2:
        return n
    ex = current_executor()  # inside a task: the executor of the worker running it
    a = ex.submit(fib, n - 1)
    b = ex.submit(fib, n - 2)
    return a.result() + b.result()


def fib_seq(n: int) -> int:
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n", type=int, nargs="?", default=18)
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: CPUs)")
    args = parser.parse_args()
    start = time.perf_counter()
    with DTMExecutor(args.workers) as ex:
        value = ex.submit(fib, args.n).result()
        workers = ex.max_workers
    elapsed = time.perf_counter() - start
    tasks = 2 * fib_seq(args.n + 1) - 1  # calls made by the naive recursion
    assert value == fib_seq(args.n), (value, fib_seq(args.n))
    print(f"fib({args.n}) = {value}: {tasks} tasks on {workers} worker(s) in {elapsed:.2f} s")


if __name__ == "__main__":
    main()

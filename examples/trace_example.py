"""Trace a nested run: every task's start, duration, thread, parent and waits, per worker.

``DTMExecutor(trace_dir=DIR)`` makes each worker record what it did; when the executor shuts
down, DIR receives ``log<rank>.xml`` per rank (DTM's trace files) and one ``trace.json`` with the
whole run as a timeline. The run here is a binary tree of tasks (each node submits two children
and waits on them, each leaf computes a few milliseconds), then a ``map``.

Run it with ``python examples/trace_example.py [--workers N] [--trace-dir DIR]``, then
``python -m dtm_executor.trace DIR`` for the summary and ``--plot timeline.png`` for a picture.
"""

from __future__ import annotations

import argparse
import os
import time

from dtm_executor import DTMExecutor, current_executor


def spin(seconds: float) -> None:
    """Busy work (a sleep would free the CPU, which a real computation does not)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def tree(depth: int) -> int:
    """Count the leaves of a binary tree, with every node a task."""
    if depth == 0:
        spin(0.004)
        return 1
    ex = current_executor()
    left = ex.submit(tree, depth - 1)
    right = ex.submit(tree, depth - 1)
    spin(0.001)  # some work of the node's own while its children wait to run
    return left.result() + right.result()


def score(x: int) -> int:
    spin(0.001 * (1 + x % 4))
    return x * x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--depth", type=int, default=7, help="depth of the task tree (2**depth leaves)")
    parser.add_argument("--trace-dir", default="dtm-trace")
    parser.add_argument("--summary", action="store_true", help="also print the run summary at shutdown")
    args = parser.parse_args()
    with DTMExecutor(args.workers, trace_dir=args.trace_dir, print_summary=args.summary) as ex:
        leaves = ex.submit(tree, args.depth).result()
        total = sum(ex.map(score, range(300)))
    assert leaves == 2**args.depth and total == sum(x * x for x in range(300))
    where = os.path.abspath(args.trace_dir)
    print(f"trace written to {where}:")
    for name in sorted(os.listdir(where)):
        print(f"  {name}")
    print()
    print("To see the timeline, open https://ui.perfetto.dev (or chrome://tracing in Chrome/Chromium)")
    print(f"and load {os.path.join(where, 'trace.json')}: one track per worker thread, tasks as slices")
    print("(click one for its id, parent, items), waits on children as 'wait' slices, arrows from")
    print("each parent to the children it spawned, steals and messages as instant events.")
    print()
    print(f"Summary from the files:  python -m dtm_executor.trace {args.trace_dir}")
    print(f"Picture:                 python -m dtm_executor.trace {args.trace_dir} --plot timeline.png")


if __name__ == "__main__":
    main()

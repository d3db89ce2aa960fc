"""MPI benchmarks: DTMExecutor over MPI against mpi4py.futures.MPIPoolExecutor, in the same run.

The driver starts two MPI jobs with the same number of ranks and prints one table:

* ours:     ``mpiexec -n N python -m dtm_executor bench_mpi.py --child ours``
  (every rank executes tasks; rank 0 also runs this script)
* mpi4py:   ``mpiexec -n N python -m mpi4py.futures bench_mpi.py --child mpi4py``
  (rank 0 runs this script and manages; ranks 1..N-1 execute tasks)

Cases: trivial submit throughput, default ``map`` throughput (``chunksize`` left to each
executor: ours sizes chunks itself, MPIPoolExecutor defaults to 1), a depth-10 binary tree of
nested tasks with 1 ms CPU leaves (ideal = 1024 ms / N ranks; MPIPoolExecutor cannot nest: n/a),
and the round trip of a 25 MB numpy array. Speed is never asserted anywhere; this only prints.

    .venv/bin/python benchmarks/bench_mpi.py              # -n 3, about a minute
    .venv/bin/python benchmarks/bench_mpi.py -n 5 --quick
    .venv/bin/python benchmarks/bench_mpi.py --json out.json

``--mpiexec`` names the launcher (default: the one next to this Python, else on PATH).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from time import perf_counter
from typing import Any, Callable

MARK = "BENCH_JSON "


# -- task functions (module level: the other ranks import this script) --------------------------
def noop(x: Any) -> Any:
    return x


def inc(x: int) -> int:
    return x + 1


def busy(seconds: float) -> None:
    end = perf_counter() + seconds
    while perf_counter() < end:
        pass


def tree(depth: int, leaf_seconds: float) -> int:
    if depth == 0:
        busy(leaf_seconds)
        return 1
    from dtm_executor import current_executor

    ex = current_executor()
    a = ex.submit(tree, depth - 1, leaf_seconds)
    b = ex.submit(tree, depth - 1, leaf_seconds)
    return a.result() + b.result()


def echo(a: Any) -> Any:
    return a


# -- one MPI job ---------------------------------------------------------------------------------
def _timed(fn: Callable[[], Any]) -> float:
    t0 = perf_counter()
    fn()
    return perf_counter() - t0


def run_cases(ex: Any, nested: bool, quick: bool, workers: int) -> dict[str, Any]:
    n_submit = 500 if quick else 5000
    # MPIPoolExecutor's map sends items one by one (chunksize=1): 100,000 would take minutes
    n_map = (10_000 if quick else 100_000) if nested else (2_000 if quick else 10_000)
    depth = 7 if quick else 10
    out: dict[str, Any] = {"workers": workers, "n_submit": n_submit, "n_map": n_map}

    # warm up: every worker has started, imported this script and run a task
    list(ex.map(noop, range(20 * workers)))

    def submits() -> None:
        futs = [ex.submit(noop, i) for i in range(n_submit)]
        assert sum(f.result() for f in futs) == n_submit * (n_submit - 1) // 2

    out["submit"] = n_submit / _timed(submits)

    def maps() -> None:
        assert sum(ex.map(inc, range(n_map))) == n_map * (n_map + 1) // 2

    out["map"] = n_map / _timed(maps)

    if nested:
        ex.submit(tree, 4, 0.001).result()  # warm the nesting path
        wall = _timed(lambda: ex.submit(tree, depth, 0.001).result() == 2**depth or _fail())
        out["tree_wall"] = wall
        out["tree_ideal"] = (2**depth) * 0.001 / workers
        out["tree_depth"] = depth
        out["tree_empty"] = _timed(lambda: ex.submit(tree, depth, 0.0).result())

    try:
        import numpy as np

        a = np.ones(25_000_000 // 8)
        ex.submit(echo, a[:10]).result()
        reps = 2 if quick else 4
        wall = _timed(lambda: [ex.submit(echo, a).result() for _ in range(reps)])
        out["transfer"] = 2 * reps * a.nbytes / wall / 1e6  # MB/s, both directions
    except ImportError:  # pragma: no cover
        pass
    return out


def _fail() -> None:
    raise AssertionError("wrong tree result")


def child(kind: str, quick: bool) -> None:
    if kind == "ours":
        from dtm_executor import DTMExecutor

        with DTMExecutor(transport="mpi") as ex:
            res = run_cases(ex, True, quick, ex.max_workers)
    else:
        from mpi4py import MPI
        from mpi4py.futures import MPIPoolExecutor

        with MPIPoolExecutor() as ex:
            res = run_cases(ex, False, quick, MPI.COMM_WORLD.Get_size() - 1)
    print(MARK + json.dumps(res), flush=True)


# -- the driver ------------------------------------------------------------------------------------
def _mpiexec(given: str | None) -> str:
    if given:
        return given
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return here if os.path.exists(here) else (shutil.which("mpiexec") or "mpiexec")


def _job(cmd: list[str], timeout: float) -> dict[str, Any] | None:
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, start_new_session=True)
    except subprocess.TimeoutExpired:
        print(f"  TIMEOUT after {timeout:.0f} s", file=sys.stderr)
        return None
    for line in p.stdout.splitlines():
        if line.startswith(MARK):
            return json.loads(line[len(MARK):])
    print(f"  failed (status {p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}", file=sys.stderr)
    return None


def _load() -> str:
    try:
        return "load average %.2f %.2f %.2f" % os.getloadavg()
    except OSError:  # pragma: no cover
        return ""


def driver(args: argparse.Namespace) -> int:
    me = os.path.abspath(__file__)
    mpiexec = _mpiexec(args.mpiexec)
    py = sys.executable
    extra = ["--quick"] if args.quick else []
    n = str(args.n)
    before = _load()
    ours = _job([mpiexec, "-n", n, py, "-m", "dtm_executor", me, "--child", "ours", *extra], args.timeout)
    theirs = _job([mpiexec, "-n", n, py, "-m", "mpi4py.futures", me, "--child", "mpi4py", *extra],
                  args.timeout)
    print(f"\nMPI benchmarks, {n} ranks ({os.cpu_count()} CPUs here; {before} before, {_load()} after)")
    print(f"ours: DTMExecutor(transport='mpi'), {ours['workers'] if ours else '?'} workers (all ranks); "
          f"mpi4py.futures.MPIPoolExecutor: {theirs['workers'] if theirs else '?'} workers "
          "(rank 0 manages)\n")

    def g(d: dict[str, Any] | None, k: str) -> float | None:
        return None if d is None else d.get(k)

    def fmt(v: float | None, unit: str) -> str:
        if v is None:
            return "n/a"
        return f"{v:,.0f} {unit}" if unit != "x" else f"{v:.2f}x"

    rows = []
    for key, label, unit in (("submit", "trivial submit", "tasks/s"),
                             ("map", "map of trivial items, default chunksize", "items/s"),
                             ("transfer", "25 MB array round trip", "MB/s")):
        a, b = g(ours, key), g(theirs, key)
        ratio = f"{a / b:.2f}" if a and b else "n/a"
        rows.append((label, fmt(a, unit), fmt(b, unit), ratio))
    if ours is not None and "tree_wall" in ours:
        x = ours["tree_wall"] / ours["tree_ideal"]
        rows.append((f"tree depth {ours['tree_depth']}, 1 ms leaves: wall/ideal", fmt(x, "x"),
                     "n/a (cannot nest)", "n/a"))
    w = [max(len(r[i]) for r in rows + [("case", "ours", "MPIPoolExecutor", "ours/theirs")]) for i in range(4)]
    header = ("case", "ours", "MPIPoolExecutor", "ours/theirs")
    print("  ".join(h.ljust(w[i]) for i, h in enumerate(header)))
    print("  ".join("-" * w[i] for i in range(4)))
    for r in rows:
        print("  ".join(r[i].ljust(w[i]) for i in range(4)))
    if ours is not None and "tree_wall" in ours:
        print(f"\ntree: wall {ours['tree_wall']:.3f} s vs ideal {ours['tree_ideal']:.3f} s "
              f"({2 ** ours['tree_depth']} leaves x 1 ms / {ours['workers']} ranks); the same tree "
              f"with empty leaves took {ours['tree_empty']:.3f} s")
    if ours is not None and theirs is not None:
        print(f"sizes: {ours['n_submit']:,} submits each; map of {ours['n_map']:,} items (ours) and "
              f"{theirs['n_map']:,} (MPIPoolExecutor, chunksize=1)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"ranks": args.n, "ours": ours, "mpi4py": theirs}, f, indent=2)
    return 0 if ours is not None and theirs is not None else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=3, help="MPI ranks for both jobs (default 3)")
    p.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    p.add_argument("--json", help="also write the numbers to this file")
    p.add_argument("--mpiexec", help="the MPI launcher to use")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per MPI job")
    p.add_argument("--child", choices=("ours", "mpi4py"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child, args.quick)
        return 0
    return driver(args)


if __name__ == "__main__":
    sys.exit(main())

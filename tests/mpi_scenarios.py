"""Core scenarios run by tests/test_mpi.py through every launch style (not a pytest module).

Each style runs this same file unchanged:
  mpiexec -n N python -m dtm_executor tests/mpi_scenarios.py
  mpiexec -n N python tests/mpi_scenarios.py
  python -m dtm_executor -n N tests/mpi_scenarios.py
It prints one ``OK <scenario>`` line per scenario and ``ALL OK <n> workers`` at the end; any
failure is an uncaught exception (a non-zero exit status on every rank).
"""

from __future__ import annotations

import os
import random
import sys
import time

import numpy as np
from deap import algorithms, base, creator, tools

from dtm_executor import DTMExecutor, current_executor

creator.create("FitnessMax", base.Fitness, weights=(1.0,))
creator.create("Individual", list, fitness=creator.FitnessMax)

TAG = ["unset"]


def set_tag(tag: str) -> None:
    """The executor's initializer: sets a module global (the tasks' own) and the environment."""
    TAG[0] = tag
    os.environ["SCENARIO_TAG"] = tag


def read_tag(_: int) -> str:
    return os.environ.get("SCENARIO_TAG", "unset")


def read_global_tag(_: int) -> str:
    return TAG[0]


def my_rank(_: object = None) -> str:
    for var in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "DTM_EXECUTOR_RANK"):
        if var in os.environ:
            return os.environ[var]
    return "0"


def busy(seconds: float) -> str:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    return my_rank()


# -- nested random trees -----------------------------------------------------------------------
def tree(seed: int, depth: int) -> int:
    """Sum of leaf values of a random tree; every node is a task waiting on its children."""
    rng = random.Random(seed)
    if depth == 0 or rng.random() < 0.15:
        return seed % 7
    ex = current_executor()
    kids = [ex.submit(tree, rng.randrange(1 << 30), depth - 1) for _ in range(rng.randint(1, 4))]
    return sum(f.result() for f in kids)


def tree_seq(seed: int, depth: int) -> int:
    rng = random.Random(seed)
    if depth == 0 or rng.random() < 0.15:
        return seed % 7
    return sum(tree_seq(rng.randrange(1 << 30), depth - 1) for _ in range(rng.randint(1, 4)))


# -- fib and fan-out ----------------------------------------------------------------------------
def fib(n: int) -> int:
    if n < 2:
        return n
    ex = current_executor()
    a = ex.submit(fib, n - 1)
    b = ex.submit(fib, n - 2)
    return a.result() + b.result()


def fan_out(n: int) -> int:
    ex = current_executor()
    return sum(ex.map(square, range(n)))


def square(x: int) -> int:
    return x * x


# -- exceptions ---------------------------------------------------------------------------------
class Boom(Exception):
    pass


def fail_at(depth: int) -> int:
    if depth == 0:
        raise Boom("bottom")
    return current_executor().submit(fail_at, depth - 1).result()


def fail_on_seven(x: int) -> int:
    if x == 7:
        raise Boom(f"item {x}")
    return x


# -- big buffers ----------------------------------------------------------------------------------
def array_stats(a: np.ndarray) -> tuple[float, np.ndarray]:
    return float(a.sum()), a[::2].copy()


# -- lambdas and closures -------------------------------------------------------------------------
def make_adder(k: int):
    return lambda x: x + k


def nested_lambda(k: int) -> list[int]:
    ex = current_executor()
    return [f.result() for f in [ex.submit(lambda y: y * k, i) for i in range(5)]]


# -- DEAP OneMax ----------------------------------------------------------------------------------
def eval_onemax(ind: list[int]) -> tuple[float]:
    return (float(sum(ind)),)


def onemax(map_fn) -> tuple[float, list[int]]:
    random.seed(7)
    tb = base.Toolbox()
    tb.register("attr_bool", random.randint, 0, 1)
    tb.register("individual", tools.initRepeat, creator.Individual, tb.attr_bool, 40)
    tb.register("population", tools.initRepeat, list, tb.individual)
    tb.register("evaluate", eval_onemax)
    tb.register("mate", tools.cxTwoPoint)
    tb.register("mutate", tools.mutFlipBit, indpb=0.05)
    tb.register("select", tools.selTournament, tournsize=3)
    tb.register("map", map_fn)
    pop = tb.population(n=60)
    hof = tools.HallOfFame(1)
    algorithms.eaSimple(pop, tb, cxpb=0.5, mutpb=0.2, ngen=8, halloffame=hof, verbose=False)
    return hof[0].fitness.values[0], list(hof[0])


def ok(name: str, t0: float) -> None:
    print(f"OK {name} ({time.perf_counter() - t0:.2f} s)", flush=True)


def main() -> None:
    with DTMExecutor(initializer=set_tag, initargs=("session-1",)) as ex:
        n = ex.max_workers
        t = time.perf_counter()
        tags = set(ex.map(read_tag, range(4 * n), chunksize=1))
        assert tags == {"session-1"}, tags
        tags = set(ex.map(read_global_tag, range(4 * n), chunksize=1))
        assert tags == {"session-1"}, tags
        ok("initializer", t)

        t = time.perf_counter()
        for seed in range(3):
            assert ex.submit(tree, seed, 6).result() == tree_seq(seed, 6), seed
        ok("nested random trees", t)

        t = time.perf_counter()
        assert ex.submit(fib, 13).result() == 233
        ok("fib", t)

        t = time.perf_counter()
        futs = [ex.submit(square, i) for i in range(300)]
        assert [f.result() for f in futs] == [i * i for i in range(300)]
        assert list(ex.map(square, range(2000))) == [i * i for i in range(2000)]
        assert ex.submit(fan_out, 500).result() == sum(i * i for i in range(500))
        ranks = set(ex.map(busy, [0.004] * (60 * n), chunksize=1))
        ok(f"fan-out (tasks ran on ranks {sorted(ranks)})", t)

        t = time.perf_counter()
        try:
            ex.submit(fail_at, 4).result()
        except Boom as e:
            assert str(e) == "bottom"
        else:
            raise AssertionError("no exception")
        it = ex.map(fail_on_seven, range(20))
        assert [next(it) for _ in range(7)] == list(range(7))
        try:
            next(it)
        except Boom as e:
            assert str(e) == "item 7"
        else:
            raise AssertionError("no exception")
        assert ex.submit(square, 12).result() == 144  # still usable
        ok("exceptions", t)

        t = time.perf_counter()
        assert list(ex.map(lambda x: x * 3, range(10))) == [x * 3 for x in range(10)]
        assert ex.submit(make_adder(5), 1).result() == 6
        assert ex.submit(nested_lambda, 3).result() == [0, 3, 6, 9, 12]
        ok("lambdas", t)

        t = time.perf_counter()
        a = np.arange(2_000_000, dtype=np.float64)  # 16 MB: out-of-band buffers
        total, half = ex.submit(array_stats, a).result()
        assert total == float(a.sum()) and np.array_equal(half, a[::2])
        ok("large buffers", t)

        t = time.perf_counter()
        assert onemax(ex.map) == onemax(map)
        ok("DEAP OneMax", t)

    t = time.perf_counter()
    with DTMExecutor() as ex2:  # a second executor in the same run
        assert ex2.submit(fib, 8).result() == 21
        assert set(ex2.map(read_tag, range(8))) <= {"session-1", "unset"}
        ok("second executor", t)
    print(f"ALL OK {n} workers", flush=True)


if __name__ == "__main__":
    sys.setrecursionlimit(10_000)
    main()

"""What can travel to workers and back: lambdas, closures, local functions and classes, partials,
bound methods, numpy arrays; module globals keep their per-worker (DTM) meaning; the function
cache survives heavy reuse and eviction."""

from __future__ import annotations

import collections
import functools
import gc
import os
import threading
import time
from typing import Any

import pytest

from dtm_executor import DTMExecutor, current_executor

np = pytest.importorskip("numpy")

pytestmark = pytest.mark.timeout(120)


def _close(ex: DTMExecutor, timeout: float = 60.0) -> None:
    """Shut ``ex`` down; if that hangs (a scheduler bug), kill its workers so the run goes on."""
    t = threading.Thread(target=ex.shutdown, kwargs={"wait": True, "cancel_futures": True}, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        ex._pool.kill()
        pytest.fail(f"shutdown hung for {timeout} s; the workers were killed")


@pytest.fixture(scope="module")
def ex():
    ex = DTMExecutor(2)
    yield ex
    _close(ex)


# -- module-level helpers (travel by reference) -----------------------------------------------------
def add(a: int, b: int) -> int:
    return a + b


def call(fn: Any, *args: Any) -> Any:
    return fn(*args)


class Point:
    """A class of the test module: instances travel by reference to it."""

    def __init__(self, x: int, y: int) -> None:
        self.x = x
        self.y = y

    def norm1(self) -> int:
        return abs(self.x) + abs(self.y)

    def moved(self, dx: int, dy: int) -> "Point":
        return Point(self.x + dx, self.y + dy)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)

    def __repr__(self) -> str:
        return f"Point({self.x}, {self.y})"


class Accumulator:
    def __init__(self, start: int) -> None:
        self.start = start

    def __call__(self, x: int) -> int:
        return self.start + x


def make_adder(n: int) -> Any:
    def adder(x: int) -> int:
        return x + n

    return adder


# -- functions that cannot travel by reference ---------------------------------------------------------
def test_lambda(ex):
    assert ex.submit(lambda x: x * 3, 14).result(timeout=30) == 42
    assert list(ex.map(lambda x: x * x, range(20))) == [x * x for x in range(20)]


def test_lambda_raising(ex):
    with pytest.raises(ZeroDivisionError):
        ex.submit(lambda: 1 // 0).result(timeout=30)


def test_closure(ex):
    base = 100
    offsets = {"a": 1, "b": 2}
    fn = lambda k: base + offsets[k]  # noqa: E731 - a closure over two locals
    assert ex.submit(fn, "b").result(timeout=30) == 102
    assert ex.submit(make_adder(5), 10).result(timeout=30) == 15
    assert list(ex.map(make_adder(-1), range(5))) == [-1, 0, 1, 2, 3]


def test_function_defined_in_test(ex):
    def local_fn(x: int, *, scale: int = 2) -> tuple[int, int]:
        return x * scale, os.getpid()

    value, pid = ex.submit(local_fn, 21, scale=2).result(timeout=30)
    assert value == 42 and pid != os.getpid()


def test_recursive_local_function(ex):
    def fact(n: int) -> int:
        return 1 if n <= 1 else n * fact(n - 1)

    assert ex.submit(fact, 10).result(timeout=30) == 3628800


def test_local_function_submitting_nested_local_functions(ex):
    def square(x: int) -> int:
        return x * x

    def parent(n: int) -> int:
        inner = current_executor()
        return sum(inner.map(square, range(n))) + inner.submit(lambda: 1).result()

    assert ex.submit(parent, 50).result(timeout=60) == sum(x * x for x in range(50)) + 1


def test_partial(ex):
    assert ex.submit(functools.partial(add, 40), 2).result(timeout=30) == 42
    assert ex.submit(functools.partial(add, b=2), 40).result(timeout=30) == 42
    assert list(ex.map(functools.partial(add, 10), range(3))) == [10, 11, 12]
    assert ex.submit(functools.partial(lambda a, b: a * b, 6), 7).result(timeout=30) == 42


def test_bound_methods(ex):
    p = Point(3, -4)
    assert ex.submit(p.norm1).result(timeout=30) == 7
    assert ex.submit(p.moved, 1, 1).result(timeout=30) == Point(4, -3)
    assert list(ex.map(Point(1, 1).moved, [0, 1], [0, 2])) == [Point(1, 1), Point(2, 3)]
    assert ex.submit(Accumulator(10), 5).result(timeout=30) == 15  # a callable instance
    assert ex.submit("-".join, ["a", "b"]).result(timeout=30) == "a-b"  # a builtin's bound method


def test_module_classes_round_trip(ex):
    p = ex.submit(Point, 1, 2).result(timeout=30)  # the class itself as the function
    assert type(p) is Point and p == Point(1, 2)
    got = ex.submit(call, Point.moved, Point(0, 0), 5, 6).result(timeout=30)
    assert type(got) is Point and got == Point(5, 6)
    assert ex.submit(call, lambda cls: cls.__name__, Point).result(timeout=30) == "Point"


def test_class_defined_in_test(ex):
    class Local:
        def __init__(self, v: int) -> None:
            self.v = v

        def double(self) -> "Local":
            return Local(self.v * 2)

    out = ex.submit(Local.double, Local(21)).result(timeout=30)
    assert type(out).__name__ == "Local" and out.v == 42
    assert ex.submit(Local(4).double).result(timeout=30).v == 8


def test_exception_class_defined_in_test(ex):
    class LocalError(Exception):
        pass

    def boom() -> None:
        raise LocalError("local failure")

    with pytest.raises(Exception, match="local failure") as info:
        ex.submit(boom).result(timeout=30)
    assert type(info.value).__name__ == "LocalError"


# -- numpy -------------------------------------------------------------------------------------------
def array_info(a: Any) -> tuple[Any, ...]:
    return a.dtype.str, a.shape, bool(a.flags.c_contiguous), bool(a.flags.f_contiguous), a.sum()


def echo(a: Any) -> Any:
    return a


def test_large_array_round_trip(ex):
    rng = np.random.default_rng(0)
    big = rng.standard_normal(4_000_000)  # 32 MB
    back = ex.submit(echo, big).result(timeout=60)
    assert back.dtype == big.dtype and back.shape == big.shape
    assert np.array_equal(back, big)
    assert back is not big
    dtype, shape, _, _, total = ex.submit(array_info, big).result(timeout=60)
    assert dtype == big.dtype.str and shape == big.shape and total == big.sum()


@pytest.mark.parametrize(
    "make",
    [
        lambda: np.arange(3_000_000, dtype=np.int64).reshape(1000, 3000),
        lambda: np.linspace(0, 1, 2_000_000, dtype=np.float32).reshape(100, 200, 100),
        lambda: (np.arange(600_000) + 1j * np.arange(600_000)).astype(np.complex128),
        lambda: np.arange(2_000_000) % 3 == 0,
        lambda: np.arange(4_000_000, dtype=np.uint8).reshape(2000, 2000).T,  # Fortran order
        lambda: np.arange(30_000, dtype=np.float64)[::3],  # a non-contiguous view (in band)
        lambda: np.zeros((0, 5), dtype=np.int16),
        lambda: np.array(3.5),
        lambda: np.array([(1, 2.0, b"ab"), (3, 4.0, b"cd")] * 10_000, dtype=[("i", "i4"), ("f", "f8"), ("s", "S2")]),
    ],
    ids=["int64-2d", "float32-3d", "complex", "bool", "fortran", "strided", "empty", "0d", "structured"],
)
def test_array_kinds_round_trip(ex, make):
    a = make()
    back = ex.submit(echo, a).result(timeout=60)
    assert back.dtype == a.dtype and back.shape == a.shape
    assert np.array_equal(back, a)




def _result_or_kill(ex: DTMExecutor, fut: Any, timeout: float) -> Any:
    try:
        return fut.result(timeout=timeout)
    except TimeoutError:
        ex._pool.kill()  # a stuck sender: do not wait for the shutdown timeouts
        raise


@pytest.mark.parametrize(
    "make",
    [
        lambda: b"x" * 2_000_000,
        lambda: list(range(300_000)),
        lambda: np.arange(1_000_000, dtype=np.float64)[::3],
    ],
    ids=["bytes", "list", "strided-array"],
)
def test_large_in_band_payload_then_more_tasks(make_executor, make):
    big = make()
    ex1 = make_executor(1)
    back = _result_or_kill(ex1, ex1.submit(echo, big), 30)
    assert type(back) is type(big) and len(back) == len(big)
    if isinstance(big, np.ndarray):
        assert np.array_equal(back, big)
    else:
        assert back == big
    # the channel must still carry the next tasks and results
    assert _result_or_kill(ex1, ex1.submit(add, 1, 2), 4) == 3


def test_arrays_inside_containers_and_map(ex):
    arrays = [np.full((300, 300), i, dtype=np.int32) for i in range(12)]
    sums = list(ex.map(np.sum, arrays))
    assert sums == [i * 300 * 300 for i in range(12)]
    payload = {"a": arrays[3], "nested": [arrays[5], (arrays[7],)], "n": 1}
    back = ex.submit(echo, payload).result(timeout=60)
    assert np.array_equal(back["a"], arrays[3])
    assert np.array_equal(back["nested"][1][0], arrays[7])


def slice_sum(a: Any) -> int:
    return int(a.sum())


def split_and_sum(n: int, parts: int) -> tuple[int, int]:
    """Large array pieces as nested tasks: those another worker steals cross two processes."""
    a = np.arange(n, dtype=np.int64)
    ex = current_executor()
    futs = [ex.submit(slice_sum, piece.copy()) for piece in np.array_split(a, parts)]
    return sum(f.result() for f in futs), int(a.sum())


def test_arrays_in_nested_tasks(ex):
    got, expected = ex.submit(split_and_sum, 8_000_000, 16).result(timeout=60)
    assert got == expected


# -- module globals are per worker process (DTM semantics) ---------------------------------------------
_count = 0


def bump(pause: float) -> tuple[int, int]:
    global _count
    _count += 1
    time.sleep(pause)
    return os.getpid(), _count


def read_count() -> tuple[int, int]:
    return os.getpid(), _count


def test_module_globals_are_per_worker(make_executor):
    ntasks = 40
    ex2 = make_executor(2)
    results = [f.result(timeout=60) for f in [ex2.submit(bump, 0.02) for _ in range(ntasks)]]
    by_pid: dict[int, list[int]] = collections.defaultdict(list)
    for pid, count in results:
        by_pid[pid].append(count)
    assert os.getpid() not in by_pid
    assert _count == 0  # the test process's own global never moved
    assert len(by_pid) == 2, "both workers should have run some of the tasks"
    for counts in by_pid.values():
        # each worker counted its own tasks: 1, 2, ..., k, in its own module global
        assert sorted(counts) == list(range(1, len(counts) + 1))
    assert sum(max(c) for c in by_pid.values()) == ntasks


def test_module_globals_survive_between_tasks(make_executor):
    ex1 = make_executor(1)
    pids = {ex1.submit(bump, 0).result(timeout=30)[0] for _ in range(5)}
    pid, count = ex1.submit(read_count).result(timeout=30)
    assert pids == {pid}
    assert count == 5


# -- the function cache ---------------------------------------------------------------------------------
def test_same_function_many_times(ex):
    futs = [ex.submit(add, i, 1) for i in range(2000)]
    assert [f.result(timeout=60) for f in futs] == [i + 1 for i in range(2000)]
    lam = lambda x: -x  # noqa: E731 - the same lambda object, pickled once
    futs = [ex.submit(lam, i) for i in range(2000)]
    assert [f.result(timeout=60) for f in futs] == [-i for i in range(2000)]
    for chunk in range(5):
        assert list(ex.map(lam, range(chunk * 100, chunk * 100 + 100))) == [-i for i in range(chunk * 100, chunk * 100 + 100)]


def test_many_distinct_lambdas_evict_the_cache(ex):
    n = 1300  # more than the function cache holds
    fns = [lambda x, i=i: x * 10_000 + i for i in range(n)]
    futs = [ex.submit(fn, 7) for fn in fns]
    assert [f.result(timeout=60) for f in futs] == [70_000 + i for i in range(n)]
    # again, in another order: evicted entries must be sent again, cached ones reused
    order = list(range(n - 1, -1, -3)) + list(range(0, n, 7))
    futs = [ex.submit(fns[i], 8) for i in order]
    assert [f.result(timeout=60) for f in futs] == [80_000 + i for i in order]


def test_many_distinct_closures(ex):
    n = 1200
    adders = [make_adder(i) for i in range(n)]
    futs = [ex.submit(a, 1) for a in adders]
    assert [f.result(timeout=60) for f in futs] == [i + 1 for i in range(n)]


def test_short_lived_lambdas_reusing_ids(ex):
    """Each lambda dies as soon as its task is done, so the next one often gets the same id():
    the cache must never hand out a dead function's bytes for a new one."""
    for i in range(300):
        fn = make_adder(i)
        assert ex.submit(fn, 1000).result(timeout=30) == 1000 + i
        del fn
        if i % 50 == 0:
            gc.collect()


def many_lambdas_nested(n: int) -> list[int]:
    """Distinct lambdas made in a worker: those stolen go worker -> worker via the cache."""
    ex = current_executor()
    fns = [lambda x, i=i: x + i for i in range(n)]
    futs = [ex.submit(fn, 1) for fn in fns]
    first = [f.result() for f in futs]
    again = [ex.submit(fns[i], 2) for i in range(0, n, 5)]
    return first + [f.result() for f in again]


def test_many_distinct_lambdas_in_nested_tasks(ex):
    n = 1200
    got = ex.submit(many_lambdas_nested, n).result(timeout=100)
    assert got == [1 + i for i in range(n)] + [2 + i for i in range(0, n, 5)]

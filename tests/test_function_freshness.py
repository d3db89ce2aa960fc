"""Functions that travel by value are sent as they are at each ``submit``/``map`` call (issue 8,
item 6), and no per-function table grows without bound on the workers (item 7).

A function cache may reuse identical bytes (content-addressed), never a stale object; module-level
functions keep travelling by reference, pickled once per process.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from concurrent.futures import wait
from typing import Any

import pytest

from dtm_executor import DTMExecutor, current_executor
from dtm_executor import _serial

pytestmark = pytest.mark.timeout(120)


def _close(ex: DTMExecutor, timeout: float = 60.0) -> None:
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


def add(a: int, b: int) -> int:
    return a + b


def make_adder(n: int) -> Any:
    def adder(x: int) -> int:
        return x + n

    return adder


# -- item 6: what travels by value is current ------------------------------------------------------
def test_closure_over_a_mutated_list_sees_each_generation(ex):
    weights = [1]
    score = lambda x: x * weights[0]  # noqa: E731 - one closure object, reused every generation
    for gen in range(1, 5):
        weights[0] = gen
        futs = [ex.submit(score, 10) for _ in range(20)]  # enough for both workers to have it
        assert [f.result(timeout=30) for f in futs] == [10 * gen] * 20, f"generation {gen}"
        assert list(ex.map(score, range(6), chunksize=1)) == [x * gen for x in range(6)]


def test_partial_and_callable_objects_are_current(ex):
    data = [1, 2]
    p = functools.partial(sum, data)
    assert ex.submit(p).result(timeout=30) == 3
    data.append(10)
    assert [ex.submit(p).result(timeout=30) for _ in range(10)] == [13] * 10


class Scaler:
    def __init__(self, k: int) -> None:
        self.k = k

    def __call__(self, x: int) -> int:
        return self.k * x


def test_mutated_callable_instance_is_current(ex):
    s = Scaler(2)
    assert [ex.submit(s, 5).result(timeout=30) for _ in range(6)] == [10] * 6
    s.k = 7
    assert [ex.submit(s, 5).result(timeout=30) for _ in range(6)] == [35] * 6
    assert list(ex.map(s, range(4))) == [0, 7, 14, 21]


def test_map_takes_the_function_as_it_is_at_the_call(ex):
    box = [1]
    fn = lambda x: box[0]  # noqa: E731
    # chunks of one item, more than the first window: later chunks are submitted while consuming
    it = ex.map(fn, range(60), chunksize=1)
    box[0] = 2
    assert list(it) == [1] * 60
    assert list(ex.map(fn, range(5))) == [2] * 5


def children_of_a_closure(rounds: int) -> list[list[int]]:
    """A task that mutates what its children's closure captured between rounds; children sleep so
    that the other worker steals some (stolen children are pickled in this worker)."""
    inner = current_executor()
    state = [0]

    def child(x: int) -> int:
        time.sleep(0.005)
        return x + state[0]

    out = []
    for r in range(rounds):
        state[0] = 1000 * r
        futs = [inner.submit(child, i) for i in range(40)]
        out.append([f.result() for f in futs])
    return out


def test_stolen_nested_children_see_current_captures(ex):
    got = ex.submit(children_of_a_closure, 4).result(timeout=60)
    assert got == [[1000 * r + i for i in range(40)] for r in range(4)]


def test_module_level_functions_are_pickled_once():
    fc = _serial.FunctionCache(0)
    fid, data = fc.pickle_fn(add)
    fid2, data2 = fc.pickle_fn(add)
    assert fid2 == fid and data2 is data  # the fast path: no pickling the second time
    assert b"add" in data and len(data) < 100  # by reference: module and name only


def test_by_value_functions_are_content_addressed():
    fc = _serial.FunctionCache(0)
    box = [1]
    fn = lambda: box[0]  # noqa: E731
    fid1, data1 = fc.pickle_fn(fn)
    fid2, data2 = fc.pickle_fn(fn)
    assert fid2 == fid1 and data2 == data1  # same bytes, same id
    box[0] = 2
    fid3, data3 = fc.pickle_fn(fn)
    assert fid3 != fid1 and data3 != data1
    other = _serial.FunctionCache(5)  # another rank pickling the same thing gets the same id
    assert other.pickle_fn(fn)[0] == fid3
    assert fc.function(fid3, data3)() == 2
    assert fc.function(fid1, data1)() == 1


# -- item 7: bounded per-function tables -----------------------------------------------------------
def test_function_cache_tables_are_bounded():
    sender = _serial.FunctionCache(0, capacity=64, max_bytes=1 << 20)
    receiver = _serial.FunctionCache(1, capacity=64, max_bytes=1 << 20)
    for i in range(3000):
        fn = make_adder(i)
        fid, data = sender.pickle_fn(fn)
        got = receiver.incoming(0, fid, sender.outgoing(1, fid, data))
        assert receiver.function(fid, got)(1) == i + 1
    # one table per peer pair (64 entries) and the unpickled objects (4 x 64)
    assert sender.sizes()["entries"] <= 64
    assert receiver.sizes()["entries"] <= 64 + 4 * 64
    # big functions: never kept, always sent whole, still correct
    blob = bytes(600_000)
    for i in range(20):
        fn = functools.partial(len, blob + bytes([i % 256]))
        fid, data = sender.pickle_fn(fn)
        out = sender.outgoing(1, fid, data)
        assert out is not None
        assert receiver.function(fid, receiver.incoming(0, fid, out))() == 600_001
    assert sender.sizes()["bytes"] <= 3 * (1 << 20)
    assert receiver.sizes()["bytes"] <= 3 * (1 << 20)


def fn_table_sizes(_: int) -> tuple[int, int, dict[str, int]]:
    from dtm_executor._futures import executing_worker

    w = executing_worker()
    return os.getpid(), len(w.fn_stats), w.node.fncache.sizes()


def test_worker_tables_stay_small_over_many_distinct_closures(make_executor):
    ex = make_executor(2)
    for b in range(4):
        futs = [ex.submit(make_adder(b * 5000 + i), 1) for i in range(5000)]
        wait(futs, timeout=90)
        assert [f.result(timeout=1) for f in futs] == [b * 5000 + i + 1 for i in range(5000)]
    sizes = {}
    for f in [ex.submit(fn_table_sizes, i) for i in range(40)]:
        pid, nstats, fc_sizes = f.result(timeout=30)
        sizes[pid] = (nstats, fc_sizes)
    for pid, (nstats, fc_sizes) in sizes.items():
        assert nstats <= 10, f"worker {pid}: {nstats} function stats entries"
        assert fc_sizes["entries"] <= 6 * 1024, (pid, fc_sizes)  # see the unit test above
        assert fc_sizes["bytes"] <= 3 * _serial.TABLE_BYTES, (pid, fc_sizes)


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


@pytest.mark.timeout(600)
def test_worker_memory_is_flat_over_200k_fresh_closures(make_executor):
    """Old code: every worker grew ~17 MiB per 100k distinct closures (one stats entry each)."""
    ex = make_executor(2)
    pids = [p.pid for p in ex._pool.procs.values()]
    batch = 10_000

    def run(nbatches: int, start: int) -> None:
        for b in range(nbatches):
            base = start + b * batch
            futs = [ex.submit(make_adder(base + i), 1) for i in range(batch)]
            done, not_done = wait(futs, timeout=120)
            assert not not_done, "tasks did not finish"
            assert futs[-1].result() == base + batch
            del futs, done

    run(3, 0)  # warm up: caches full, allocator settled
    before = [_rss_mib(p) for p in pids]
    run(20, 10**6)
    after = [_rss_mib(p) for p in pids]
    growth = [a - b for a, b in zip(after, before)]
    # generous: the old code grew by ~35 MiB per worker here
    assert max(growth) < 12, f"worker RSS grew by {growth} MiB over 200k distinct closures"

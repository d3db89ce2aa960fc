"""Nested tasks: tasks that submit subtasks and wait on them, at any depth, on few workers.

Every task function lives at module level so it travels by reference; the worker processes
import this module the way multiprocessing's spawn imports a test module.
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import os
import random
import threading
import time
from pathlib import Path

import pytest

from dtm_executor import DTMExecutor, current_executor

pytestmark = pytest.mark.timeout(120)


# -- fixtures ---------------------------------------------------------------------------------
def _close(ex: DTMExecutor, timeout: float = 60.0) -> None:
    """Shut ``ex`` down; if that hangs (a scheduler bug), kill its workers so the run goes on."""
    t = threading.Thread(target=ex.shutdown, kwargs={"wait": True, "cancel_futures": True}, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        ex._pool.kill()
        pytest.fail(f"shutdown hung for {timeout} s; the workers were killed")


@pytest.fixture(scope="module")
def ex1():
    ex = DTMExecutor(1)
    yield ex
    _close(ex)


@pytest.fixture(scope="module")
def ex2():
    ex = DTMExecutor(2)
    yield ex
    _close(ex)


@pytest.fixture(params=[1, 2], ids=["1worker", "2workers"])
def ex(request, ex1, ex2):
    return ex1 if request.param == 1 else ex2


def fib_seq(n: int) -> int:
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


# -- the three ways to reach the executor from inside a task -----------------------------------
def fib_current(n: int) -> int:
    if n < 2:
        return n
    ex = current_executor()
    a = ex.submit(fib_current, n - 1)
    b = ex.submit(fib_current, n - 2)
    return a.result() + b.result()


def fib_pickled(ex: DTMExecutor, n: int) -> int:
    """``ex`` was pickled into the task: it must be the running worker's executor."""
    assert ex is current_executor()
    if n < 2:
        return n
    a = ex.submit(fib_pickled, ex, n - 1)
    b = ex.submit(fib_pickled, ex, n - 2)
    return a.result() + b.result()


def fib_constructed(n: int) -> int:
    """``DTMExecutor()`` inside a task is the running worker's executor, not a new pool."""
    if n < 2:
        return n
    with DTMExecutor() as ex:  # leaving the block must not shut the pool down
        assert ex is current_executor()
        a = ex.submit(fib_constructed, n - 1)
        b = ex.submit(fib_constructed, n - 2)
    return a.result() + b.result()


@pytest.mark.parametrize("how", ["current_executor", "pickled", "constructed"])
def test_fib18_every_call_a_task(ex, how):
    if how == "current_executor":
        fut = ex.submit(fib_current, 18)
    elif how == "pickled":
        fut = ex.submit(fib_pickled, ex, 18)
    else:
        fut = ex.submit(fib_constructed, 18)
    assert fut.result(timeout=100) == fib_seq(18) == 2584


def describe_nested_handle() -> tuple[bool, bool, int]:
    h = current_executor()
    return (h is DTMExecutor(), isinstance(h, DTMExecutor), h.max_workers)


def test_nested_handle_is_the_worker_executor(ex):
    same, is_executor, nworkers = ex.submit(describe_nested_handle).result(timeout=30)
    assert same and is_executor
    assert nworkers == ex.max_workers
    # the outer executor still works after tasks entered and left `with DTMExecutor()`
    assert ex.submit(fib_constructed, 10).result(timeout=30) == 55


def test_current_executor_outside_tasks_is_the_latest(make_executor):
    ex = make_executor(1)
    assert current_executor() is ex
    assert ex.submit(fib_current, 12).result(timeout=30) == fib_seq(12)


# -- wide fan-out, waited on in every style ------------------------------------------------------
def square(x: int) -> int:
    return x * x


def fan_out(n: int, style: str) -> int:
    ex = current_executor()
    if style == "map":
        return sum(ex.map(square, range(n)))
    futs = [ex.submit(square, i) for i in range(n)]
    if style == "result":
        return sum(f.result() for f in futs)
    if style == "wait":
        done, not_done = cf.wait(futs)
        assert not not_done and len(done) == n
        return sum(f.result() for f in futs)
    if style == "wait_first":
        # FIRST_COMPLETED returns early; then wait for the rest
        done, not_done = cf.wait(futs, return_when=cf.FIRST_COMPLETED)
        assert done
        done2, not_done2 = cf.wait(not_done)
        assert not not_done2 and len(done) + len(done2) == n
        return sum(f.result() for f in futs)
    if style == "as_completed":
        seen = 0
        total = 0
        for f in cf.as_completed(futs):
            seen += 1
            total += f.result()
        assert seen == n
        return total
    raise AssertionError(style)


@pytest.mark.parametrize("style", ["result", "map", "wait", "wait_first", "as_completed"])
def test_fan_out_1000(ex, style):
    expected = sum(i * i for i in range(1000))
    assert ex.submit(fan_out, 1000, style).result(timeout=100) == expected


def fan_out_of_fan_outs(n: int, m: int) -> int:
    ex = current_executor()
    return sum(ex.map(fan_out, [m] * n, ["as_completed", "wait", "result", "map"] * (n // 4)))


def test_fan_out_of_fan_outs(ex):
    expected = 8 * sum(i * i for i in range(100))
    assert ex.submit(fan_out_of_fan_outs, 8, 100).result(timeout=100) == expected


# -- deep chains -------------------------------------------------------------------------------
def chain(n: int) -> int:
    if n == 0:
        return 0
    return current_executor().submit(chain, n - 1).result() + 1


def chain_raise(n: int) -> int:
    if n == 0:
        raise KeyError("bottom of the chain")
    return current_executor().submit(chain_raise, n - 1).result() + 1


@pytest.mark.parametrize("depth", [200, 1000])
def test_deep_chain_no_recursion_error(ex, depth):
    assert ex.submit(chain, depth).result(timeout=100) == depth


def test_deep_chain_exception_from_the_bottom(ex):
    with pytest.raises(KeyError, match="bottom of the chain"):
        ex.submit(chain_raise, 200).result(timeout=100)


def test_many_chains_at_once(ex):
    futs = [ex.submit(chain, 50 + i) for i in range(20)]
    assert [f.result(timeout=100) for f in futs] == [50 + i for i in range(20)]


# -- many more blocked parents than workers ------------------------------------------------------
def tree(depth: int, width: int, style: str) -> int:
    """Number of leaves of a full tree where every internal node waits on all its children."""
    if depth == 0:
        return 1
    ex = current_executor()
    futs = [ex.submit(tree, depth - 1, width, style) for _ in range(width)]
    if style == "fifo":  # wait on the oldest child first: it is the deepest in the local deque
        return sum(f.result() for f in futs)
    if style == "wait":
        cf.wait(futs)
        return sum(f.result() for f in futs)
    if style == "as_completed":
        return sum(f.result() for f in cf.as_completed(futs))
    raise AssertionError(style)


@pytest.mark.parametrize("style", ["fifo", "wait", "as_completed"])
def test_one_worker_wide_tree_every_parent_waits(ex1, style):
    # 4**5 leaves, 341 waiting parents, plus 30 waiting top-level tasks on a single worker
    assert ex1.submit(tree, 5, 4, style).result(timeout=100) == 4**5
    futs = [ex1.submit(tree, 2, 3, style) for _ in range(30)]
    assert [f.result(timeout=100) for f in futs] == [9] * 30


@pytest.mark.timeout(120)
def test_one_worker_two_threads_many_waiting_parents(make_executor):
    ex = make_executor(1, max_threads=2)
    futs = [ex.submit(tree, 3, 4, "as_completed") for _ in range(40)]
    assert [f.result(timeout=100) for f in futs] == [64] * 40


# -- a waiting parent lends its worker ---------------------------------------------------------
def _wait_for(path: Path, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > end:
            return False
        time.sleep(0.005)
    return True


def long_child(tmp: str) -> tuple[int, float, float]:
    """Runs on the other worker until the test says the short tasks are all done."""
    start = time.time()
    Path(tmp, "child-started").touch()
    _wait_for(Path(tmp, "shorts-done"), 30.0)
    return os.getpid(), start, time.time()


def waiting_parent(tmp: str) -> tuple[int, float, float, tuple[int, float, float]]:
    ex = current_executor()
    child = ex.submit(long_child, tmp)
    # keep this worker busy until the idle worker has stolen the child and started it
    if not _wait_for(Path(tmp, "child-started"), 30.0):
        raise RuntimeError("the other worker never stole the child")
    t0 = time.time()
    res = child.result()  # the child runs elsewhere: this worker must do other work meanwhile
    t1 = time.time()
    return os.getpid(), t0, t1, res


def short_task(i: int) -> tuple[int, float, float]:
    start = time.time()
    time.sleep(0.01)
    return os.getpid(), start, time.time()


@pytest.mark.timeout(120)
def test_waiting_parent_does_not_hold_its_worker(make_executor, tmp_path):
    ex = make_executor(2)
    parent = ex.submit(waiting_parent, str(tmp_path))
    assert _wait_for(tmp_path / "child-started", 60.0)
    shorts = [ex.submit(short_task, i) for i in range(20)]
    short_res = [f.result(timeout=60) for f in shorts]
    (tmp_path / "shorts-done").touch()
    ppid, wait_start, wait_end, (cpid, cstart, cend) = parent.result(timeout=60)
    assert ppid != cpid, "the child was meant to run on the other worker"
    on_parent_worker = [(s, e) for pid, s, e in short_res if pid == ppid]
    assert on_parent_worker, "no short task ran on the waiting parent's worker"
    for s, e in on_parent_worker:
        # they ran while the parent was blocked on its child, overlapping the child's run
        assert wait_start <= s and e <= wait_end
        assert cstart <= s and e <= cend


# -- bounded threads -----------------------------------------------------------------------------
def busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def thread_tree(depth: int, width: int) -> tuple[int, dict[int, int]]:
    """(leaves, {pid: max threading.active_count() seen}) of a tree whose parents all wait."""
    me = {os.getpid(): threading.active_count()}
    if depth == 0:
        busy(0.0005)
        me[os.getpid()] = max(me[os.getpid()], threading.active_count())
        return 1, me
    ex = current_executor()
    futs = [ex.submit(thread_tree, depth - 1, width) for _ in range(width)]
    if depth % 2:
        cf.wait(futs)
    leaves = 0
    for f in futs:
        n, counts = f.result()
        leaves += n
        for pid, c in counts.items():
            me[pid] = max(me.get(pid, 0), c)
    me[os.getpid()] = max(me[os.getpid()], threading.active_count())
    return leaves, me


@pytest.mark.timeout(180)
def test_bounded_threads_wide_deep_tree(make_executor):
    max_threads = 4
    ex = make_executor(2, max_threads=max_threads)
    futs = [ex.submit(thread_tree, 4, 6) for _ in range(4)]
    results = [f.result(timeout=150) for f in futs]
    assert all(leaves == 6**4 for leaves, _ in results)
    peak: dict[int, int] = {}
    for _, counts in results:
        for pid, c in counts.items():
            peak[pid] = max(peak.get(pid, 0), c)
    assert os.getpid() not in peak
    # a worker process has its main (communication) thread, a sender thread and at most
    # max_threads executing threads; one more may still be exiting when counted
    assert max(peak.values()) <= max_threads + 3, peak


# Thread pressure on purpose: every parent's child waits (a DTM wait, which lends the worker) on
# its own future until all parents have started. Without a cap each waiting parent would pin a
# thread; with max_threads the worker runs the rest inline on the threads it has.
_arrived: dict[str, int] = {}
_gate_futures: dict[int, object] = {}
_tokens = itertools.count()


def gate(token: int, key: str, n: int) -> int:
    _arrived[key] = _arrived.get(key, 0) + 1
    me = _gate_futures.pop(token)
    peak = threading.active_count()
    deadline = time.monotonic() + 60
    while _arrived[key] < n:
        cf.wait([me], timeout=0.005)  # our own future: never done while we run
        peak = max(peak, threading.active_count())
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {_arrived[key]} of {n} parents ever started")
    return peak


def gated_parent(key: str, n: int) -> tuple[int, int]:
    token = next(_tokens)
    child = current_executor().submit(gate, token, key, n)
    _gate_futures[token] = child  # before the child can run: it runs when this task waits
    return max(child.result(), threading.active_count()), os.getpid()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("max_threads", [2, 4])
def test_thread_cap_under_pressure(make_executor, max_threads):
    n = 30  # parents that all wait until every one of them has started, on one worker
    peaks = {}
    for cap in (max_threads, 16):
        ex = make_executor(1, max_threads=cap)
        res = [f.result(timeout=90) for f in [ex.submit(gated_parent, f"cap{cap}", n) for _ in range(n)]]
        assert len({pid for _, pid in res}) == 1
        peaks[cap] = max(peak for peak, _ in res)
    # main (communication) thread + sender thread + at most max_threads executing threads (+1:
    # a thread that is leaving may still be counted)
    assert peaks[max_threads] <= max_threads + 3, peaks
    # the cap was what bounded it: allowed more threads, the worker used more
    assert peaks[16] > peaks[max_threads], peaks


# -- cancelling a queued nested child -------------------------------------------------------------
_ran: list[str] = []  # per worker process


def record(tag: str) -> str:
    _ran.append(tag)
    return tag


def ran_here(tag: str) -> bool:
    return tag in _ran


def cancel_queued_child(tag: str) -> tuple[bool, bool, bool, bool, str]:
    """Cancel a child still queued in this worker's deque, then wait on it in every style."""
    ex = current_executor()
    victim = ex.submit(record, tag + "-victim")
    keeper = ex.submit(record, tag + "-keeper")
    cancelled = victim.cancel()
    got = keeper.result()
    raised = waited = False
    if cancelled:
        try:
            victim.result()
        except cf.CancelledError:
            raised = True
        # a cancelled future counts as done for wait()/as_completed() once its executor has
        # dropped it, as with the standard executors
        done, _ = cf.wait([victim], timeout=2)
        waited = victim in done and list(cf.as_completed([victim], timeout=2)) == [victim]
    else:  # another worker stole it first: then it runs normally
        assert victim.result() == tag + "-victim"
    return cancelled, victim.cancelled(), raised, waited, got




def test_cancel_queued_nested_child_one_worker(ex1):
    # on one worker nothing can steal the child before the parent cancels it
    cancelled, is_cancelled, raised, waited, got = ex1.submit(cancel_queued_child, "one").result(timeout=30)
    assert got == "one-keeper"
    assert cancelled and is_cancelled and raised
    assert waited
    # the same (only) worker process never ran the cancelled child
    assert ex1.submit(ran_here, "one-keeper").result(timeout=30)
    assert not ex1.submit(ran_here, "one-victim").result(timeout=30)


def cancel_without_waiting(tag: str) -> bool:
    return current_executor().submit(record, tag).cancel()


def test_cancelled_nested_child_never_runs(ex1):
    assert ex1.submit(cancel_without_waiting, "dropped").result(timeout=30)
    assert not ex1.submit(ran_here, "dropped").result(timeout=30)


def test_cancel_queued_nested_child_two_workers(ex2):
    for i in range(10):
        cancelled, is_cancelled, raised, waited, got = ex2.submit(
            cancel_queued_child, f"two{i}"
        ).result(timeout=30)
        assert got == f"two{i}-keeper"
        assert cancelled == is_cancelled
        if cancelled:
            assert raised and waited


def cancel_many_then_sum(n: int) -> tuple[int, int]:
    ex = current_executor()
    futs = [ex.submit(square, i) for i in range(n)]
    ncancelled = sum(1 for f in futs[::2] if f.cancel())
    total = sum(f.result() for f in futs if not f.cancelled())
    return ncancelled, total


def test_cancel_half_of_the_children(ex1):
    ncancelled, total = ex1.submit(cancel_many_then_sum, 100).result(timeout=30)
    assert ncancelled == 50
    assert total == sum(i * i for i in range(1, 100, 2))


# -- exceptions at random nesting levels ----------------------------------------------------------
class NodeFailed(Exception):
    pass


def faulty(path: tuple[int, ...], fail: tuple[int, ...], depth: int, width: int, style: int) -> int:
    if path == fail:
        raise NodeFailed(f"failed at {path}")
    if len(path) == depth:
        return 1
    ex = current_executor()
    kids = [path + (i,) for i in range(width)]
    if style == 0:
        futs = [ex.submit(faulty, k, fail, depth, width, style) for k in kids]
        return sum(f.result() for f in futs)
    if style == 1:
        return sum(ex.map(faulty, kids, [fail] * width, [depth] * width, [width] * width, [style] * width))
    futs = [ex.submit(faulty, k, fail, depth, width, style) for k in kids]
    if style == 2:
        cf.wait(futs)
        return sum(f.result() for f in futs)
    return sum(f.result() for f in cf.as_completed(futs))


@pytest.mark.parametrize("seed", range(8))
def test_exception_at_random_level_propagates(ex, seed):
    rng = random.Random(seed)
    depth, width = 4, 3
    level = rng.randint(0, depth)
    fail = tuple(rng.randrange(width) for _ in range(level))
    style = seed % 4
    with pytest.raises(NodeFailed) as info:
        ex.submit(faulty, (), fail, depth, width, style).result(timeout=60)
    assert str(info.value) == f"failed at {fail}"
    # and the executor is fine afterwards
    assert ex.submit(faulty, (), (9,), depth, width, style).result(timeout=60) == width**depth



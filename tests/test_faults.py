"""Worker loss on the local and TCP transports: lost work is re-run, or fails loudly with
max_retries=0. (TCP here uses workers on localhost, connected and authenticated over TCP.)"""

from __future__ import annotations

import os
import signal
import time

import pytest

from dtm_executor import DTMExecutor, WorkerLostError, current_executor


pytestmark = pytest.mark.timeout(120)

TRANSPORTS = [
    pytest.param({}, id="local"),
    pytest.param({"transport": "tcp", "hosts": ["localhost slots=3"]}, id="tcp"),
]


@pytest.fixture(params=TRANSPORTS)
def pool3(request):
    """A factory of 3-worker executors on each transport."""
    def make(**kw):
        return DTMExecutor(3, **request.param, **kw)
    return make


def slow_double(x: int) -> tuple[int, int]:
    time.sleep(0.001)
    return 2 * x, os.getpid()


def tree(depth: int, leaf_seconds: float) -> int:
    if depth == 0:
        time.sleep(leaf_seconds)
        return 1
    ex = current_executor()
    a = ex.submit(tree, depth - 1, leaf_seconds)
    b = ex.submit(tree, depth - 1, leaf_seconds)
    return a.result() + b.result()


def wait_until(pred, timeout: float):
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            return False
        time.sleep(0.02)
    return True


def _kill_worker(ex: DTMExecutor, rank: int) -> int:
    pid = ex._pool.procs[rank].pid
    os.kill(pid, signal.SIGKILL)
    return pid


def _ran_on(ex: DTMExecutor) -> set[int]:
    return {p.pid for p in ex._pool.procs.values()}


def test_kill_during_map_results_complete_and_correct(pool3) -> None:
    with pool3() as ex:
        out = []
        pids = set()
        for i, (v, pid) in enumerate(ex.map(slow_double, range(2000), chunksize=5)):
            out.append(v)
            pids.add(pid)
            if i == 300:
                dead = _kill_worker(ex, 2)
        assert out == [2 * i for i in range(2000)]
        assert dead in pids  # the victim really was doing this map's work
        # the executor goes on, and a new worker took the dead one's place
        assert ex.submit(slow_double, 21).result()[0] == 42
        assert wait_until(lambda: len(ex._node.workers) == 3, 30)
        assert 2 not in ex._node.workers


def test_kill_during_submits_each_future_settles_once(pool3) -> None:
    with pool3() as ex:
        fs = [ex.submit(slow_double, i) for i in range(2000)]
        while sum(f.done() for f in fs) < 200:
            time.sleep(0.005)
        _kill_worker(ex, 3)
        assert [f.result(timeout=60)[0] for f in fs] == [2 * i for i in range(2000)]


def test_kill_during_nested_tree_reruns_subtrees(pool3) -> None:
    with pool3() as ex:
        fut = ex.submit(tree, 8, 0.004)
        time.sleep(0.25)
        assert not fut.done()
        _kill_worker(ex, 2)
        assert fut.result(timeout=60) == 256
        assert ex.submit(tree, 4, 0.0).result(timeout=60) == 16


def slow10_double(x: int) -> tuple[int, int]:
    time.sleep(0.01)  # long enough that the victim is always inside a task when killed
    return 2 * x, os.getpid()


def test_max_retries_zero_fails_affected_futures_and_goes_on(pool3) -> None:
    with pool3(max_retries=0) as ex:
        fs = [ex.submit(slow10_double, i) for i in range(600)]
        while sum(f.done() for f in fs) < 60:
            time.sleep(0.005)
        _kill_worker(ex, 2)
        lost = 0
        for i, f in enumerate(fs):
            try:
                assert f.result(timeout=60)[0] == 2 * i
            except WorkerLostError as e:
                assert "rank 2" in str(e) and "max_retries=0" in str(e)
                lost += 1
        assert lost >= 1
        assert list(ex.map(abs, [-1, -2, -3])) == [1, 2, 3]


def test_max_retries_zero_nested_tree_fails_with_worker_lost(pool3) -> None:
    with pool3(max_retries=0) as ex:
        fut = ex.submit(tree, 8, 0.004)
        time.sleep(0.25)
        _kill_worker(ex, 2)
        try:
            assert fut.result(timeout=60) == 256  # the dead worker may have held nothing
        except WorkerLostError as e:
            assert "died" in str(e)
        assert ex.submit(tree, 3, 0.0).result(timeout=60) == 8


def test_losing_the_only_worker_replaces_it_and_reruns_the_task() -> None:
    with DTMExecutor(1) as ex:
        fut = ex.submit(slow10_double, 21)
        first = fut.result(timeout=60)[1]
        fut = ex.submit(time.sleep, 0.5)
        time.sleep(0.2)
        _kill_worker(ex, 1)
        assert fut.result(timeout=60) is None  # re-run on the replacement
        value, pid = ex.submit(slow10_double, 4).result(timeout=60)
        assert value == 8 and pid != first


def test_all_workers_lost_breaks_the_pool_instead_of_hanging() -> None:
    """With no replacement possible (it fails to start), losing the last worker breaks the
    executor: every future fails, nothing hangs."""
    from dtm_executor import BrokenDTMExecutor

    ex = DTMExecutor(1, initializer=_fail_above_rank, initargs=(1,))
    try:
        assert ex.submit(abs, -1).result(timeout=60) == 1
        fut = ex.submit(time.sleep, 30)
        time.sleep(0.3)
        _kill_worker(ex, 1)
        with pytest.raises((BrokenDTMExecutor, WorkerLostError)) as ei:
            fut.result(timeout=30)
        with pytest.raises(BrokenDTMExecutor, match="could not start"):
            ex.submit(abs, 1)
        assert "refusing to start" in str(ei.value) or isinstance(ei.value, WorkerLostError)
    finally:
        ex.shutdown(wait=False)


def _fail_above_rank(last: int) -> None:
    """An initializer that fails in replacements only (their ranks follow the first ones)."""
    if int(os.environ["DTM_EXECUTOR_RANK"]) > last:
        raise RuntimeError("refusing to start: a replacement")


def _touch(path: str) -> None:
    open(path, "w").close()


def test_cancelled_top_level_task_never_runs(tmp_path) -> None:
    import concurrent.futures as cf

    path = tmp_path / "ran"
    with DTMExecutor(1) as ex:
        ex.submit(time.sleep, 0.5)
        f = ex.submit(_touch, str(path))
        assert f.cancel()
        done, _ = cf.wait([f], timeout=10)
        assert f in done and f.cancelled()
    assert not path.exists()

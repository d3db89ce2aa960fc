"""Every future the library cancels is *done* for everyone: ``concurrent.futures.wait`` and
``as_completed`` (which only count ``CANCELLED_AND_NOTIFIED``), done-callbacks and ``result()``
(which raises ``CancelledError``) -- whether the cancelling was ``shutdown(cancel_futures=True)``,
Ctrl-C in a ``with`` block, a broken pool, or a map iterator given up by its consumer.

Cross-process "events" are files: a task waits for a path to exist, the test creates it.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Any, Iterator

import pytest

from dtm_executor import DTMExecutor, current_executor
from dtm_executor import _map

WAIT = 20.0  # seconds any wait in these tests may take (they take milliseconds when all is well)


# -- task functions (module level: workers import this module) ---------------------------
def wait_file(path: str, timeout: float = 90.0) -> bool:
    end = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > end:
            raise TimeoutError(f"{path} was never created")
        time.sleep(0.005)
    return True


def mul(x: int, y: int) -> int:
    return x * y


def nested_map_given_up(n: int) -> tuple[int, int]:
    """Inside a task: start a map, take one item, give the iterator up; then, while this task
    holds its worker (it does not help), wait from a plain thread on the chunks that were
    cancelled. Returns (cancelled, of which not done after the wait)."""
    ex = current_executor()
    chunks: list[futures.Future[Any]] = []

    def submit(fn: Any, items: list[Any], star: bool) -> futures.Future[Any]:
        f = ex._submit_chunk(fn, items, star)
        chunks.append(f)
        return f

    it = _map.chunked_map(submit, abs, (range(n),), None, 1, 1)
    assert next(it) == 0
    it.close()
    cancelled = [f for f in chunks if f.cancelled()]
    out: list[int] = []
    t = threading.Thread(target=lambda: out.append(len(futures.wait(cancelled, timeout=WAIT / 4)[1])))
    t.start()
    t.join()
    return len(cancelled), out[0]


# -- helpers ------------------------------------------------------------------------------
@pytest.fixture
def gate(tmp_path: Path) -> Iterator[Any]:
    """Factory of file gates; all are opened at teardown so no worker stays blocked."""
    made: list[Path] = []

    def make() -> str:
        p = tmp_path / f"gate-{len(made)}"
        made.append(p)
        return str(p)

    yield make
    for p in made:
        p.touch()


def _busy_worker(ex: DTMExecutor, gate: str) -> tuple[futures.Future[Any], list[futures.Future[Any]]]:
    """Occupy the only worker of ``ex``: a task blocked on ``gate`` runs there and its inbox holds
    as many more as it prefetches (whatever the scheduler's policy), so that what is submitted
    next stays queued at the hub until the gate opens. Returns the blocker and those prefetched."""
    blocker = ex.submit(wait_file, gate)
    _until(blocker.running, WAIT, "the blocker was never dispatched")
    fillers: list[futures.Future[Any]] = []
    while True:
        f = ex.submit(mul, 6, 7)
        if not _until(f.running, 1.0):
            # the worker asks for no more; withdraw this one so the caller's tasks are the queue
            if f.cancel():
                return blocker, fillers
            fillers.append(f)  # dispatched just now after all
        else:
            fillers.append(f)
        assert len(fillers) < 5000, "the worker never stopped prefetching"


def _until(pred: Any, timeout: float, fail: str | None = None) -> bool:
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            assert fail is None, fail
            return False
        time.sleep(0.01)
    return True


def _assert_done_for_everyone(fs: list[futures.Future[Any]]) -> None:
    """``fs`` are cancelled: every way of waiting sees them done, at once."""
    assert fs and all(f.cancelled() for f in fs)
    done, not_done = futures.wait(fs, timeout=WAIT)
    assert not not_done, f"{len(not_done)} cancelled future(s) never reached wait(): {not_done}"
    assert set(futures.as_completed(fs, timeout=WAIT)) == set(fs)
    seen: list[futures.Future[Any]] = []
    for f in fs:
        f.add_done_callback(seen.append)
        with pytest.raises(futures.CancelledError):
            f.result(timeout=WAIT)
        with pytest.raises(futures.CancelledError):
            f.exception(timeout=WAIT)
    assert seen == fs


# -- shutdown(cancel_futures=True) ----------------------------------------------------------
@pytest.mark.timeout(120)
def test_shutdown_no_wait_cancel_futures_then_wait(make_executor, gate):
    ex = make_executor(1)
    g = gate()
    blocker, fillers = _busy_worker(ex, g)
    queued = [ex.submit(mul, i, 2) for i in range(8)]
    ex.shutdown(wait=False, cancel_futures=True)
    assert all(f.cancelled() for f in queued)
    _assert_done_for_everyone(queued)
    Path(g).touch()
    assert blocker.result(timeout=WAIT) is True
    assert [f.result(timeout=WAIT) for f in fillers] == [42] * len(fillers)
    done, not_done = futures.wait([blocker, *fillers, *queued], timeout=WAIT)
    assert not not_done


@pytest.mark.timeout(120)
def test_waiters_installed_before_the_cancel_are_woken(make_executor, gate):
    ex = make_executor(1)
    g = gate()
    blocker, _ = _busy_worker(ex, g)
    queued = [ex.submit(mul, i, 2) for i in range(8)]
    got: dict[str, Any] = {}
    calls: list[futures.Future[Any]] = []
    for f in queued:
        f.add_done_callback(calls.append)

    def all_completed() -> None:
        got["all"] = futures.wait(queued, timeout=WAIT)

    def first_completed() -> None:
        got["first"] = futures.wait(queued, timeout=WAIT, return_when=futures.FIRST_COMPLETED)

    def as_completed() -> None:
        try:
            got["as_completed"] = list(futures.as_completed(queued, timeout=WAIT))
        except futures.TimeoutError:
            got["as_completed"] = "timed out"

    def result() -> None:
        try:
            queued[-1].result(timeout=WAIT)
        except futures.CancelledError:
            got["result"] = "cancelled"

    threads = [threading.Thread(target=fn) for fn in (all_completed, first_completed, as_completed, result)]
    for t in threads:
        t.start()
    time.sleep(0.3)  # let them block (if they have not yet, they see the cancel as it happened)
    ex.shutdown(wait=False, cancel_futures=True)
    for t in threads:
        t.join(WAIT + 10)
    assert not got["all"][1], "wait(ALL_COMPLETED) was not woken by the cancel"
    assert got["first"][0], "wait(FIRST_COMPLETED) was not woken by the cancel"
    assert got["as_completed"] != "timed out" and set(got["as_completed"]) == set(queued)
    assert got["result"] == "cancelled"
    assert sorted(map(id, calls)) == sorted(map(id, queued))
    Path(g).touch()
    assert blocker.result(timeout=WAIT) is True


@pytest.mark.timeout(120)
def test_shutdown_wait_cancel_futures_from_another_thread(make_executor, gate):
    ex = make_executor(1)
    g = gate()
    blocker, _ = _busy_worker(ex, g)
    queued = [ex.submit(mul, i, 2) for i in range(8)]
    stopper = threading.Thread(target=ex.shutdown, kwargs={"wait": True, "cancel_futures": True})
    stopper.start()  # it waits for the blocker; the queued ones are cancelled now
    _assert_done_for_everyone(queued)
    Path(g).touch()
    stopper.join(WAIT + 10)
    assert not stopper.is_alive()
    assert blocker.result(timeout=0) is True


@pytest.mark.timeout(120)
def test_ctrl_c_in_with_block_cancels_and_notifies(gate):
    g = gate()
    with pytest.raises(KeyboardInterrupt):
        with DTMExecutor(1) as ex:
            blocker, fillers = _busy_worker(ex, g)
            queued = [ex.submit(mul, i, 2) for i in range(8)]
            raise KeyboardInterrupt
    _assert_done_for_everyone(queued)
    done, not_done = futures.wait([blocker, *fillers], timeout=WAIT)
    assert not not_done  # they failed (the executor was stopped): done too


@pytest.mark.timeout(120)
def test_user_cancelled_future_is_notified_when_the_pool_breaks(make_executor, gate):
    ex = make_executor(1, max_retries=0)
    g = gate()
    blocker, _ = _busy_worker(ex, g)
    queued = [ex.submit(mul, i, 2) for i in range(4)]
    assert queued[-1].cancel()  # the user's cancel: the executor notifies when it drops it
    (proc,) = ex._pool.procs.values()
    os.kill(proc.pid, 9)
    done, not_done = futures.wait([blocker, *queued], timeout=WAIT)
    assert not not_done
    assert queued[-1].cancelled()
    assert list(futures.as_completed([queued[-1]], timeout=WAIT)) == [queued[-1]]


# -- map iterators given up by their consumer -----------------------------------------------
@pytest.mark.timeout(120)
def test_map_consumer_blocked_when_shutdown_cancels_its_chunks(make_executor, gate):
    ex = make_executor(1)
    g = gate()
    blocker, _ = _busy_worker(ex, g)
    it = ex.map(mul, range(20), range(20))  # every chunk is queued at the hub
    out: list[Any] = []

    def consume() -> None:
        try:
            out.append(list(it))
        except BaseException as e:  # noqa: BLE001
            out.append(e)

    t = threading.Thread(target=consume)
    t.start()
    time.sleep(0.3)
    ex.shutdown(wait=False, cancel_futures=True)
    t.join(WAIT)
    alive = t.is_alive()
    Path(g).touch()
    t.join(WAIT)
    assert not alive, "the map's consumer was not woken when its chunks were cancelled"
    assert len(out) == 1 and isinstance(out[0], futures.CancelledError)
    assert blocker.result(timeout=WAIT) is True


@pytest.mark.timeout(120)
def test_map_async_blocked_when_shutdown_cancels_its_chunks(make_executor, gate):
    ex = make_executor(1)
    g = gate()
    blocker, _ = _busy_worker(ex, g)
    ar = ex.map_async(mul, range(20), range(20))
    time.sleep(0.3)
    ex.shutdown(wait=False, cancel_futures=True)
    done, _ = futures.wait([ar], timeout=WAIT)
    Path(g).touch()
    assert done, "map_async never completed after its chunks were cancelled"
    with pytest.raises(futures.CancelledError):
        ar.get(timeout=0)


@pytest.mark.timeout(120)
def test_map_iterator_closed_notifies_its_queued_chunks_at_once(make_executor, gate):
    ex = make_executor(1)
    g = gate()
    blocker, _ = _busy_worker(ex, g)
    chunks: list[futures.Future[Any]] = []

    def submit(fn: Any, items: list[Any], star: bool) -> futures.Future[Any]:
        f = ex._submit_chunk(fn, items, star)
        chunks.append(f)
        return f

    it = _map.chunked_map(submit, abs, (range(40),), 0.3, 1, 1)
    with pytest.raises(futures.TimeoutError):
        next(it)  # the worker is busy: the map times out, and gives its chunks up
    # the worker is still busy, so nothing but the cancel itself can have told their waiters
    _assert_done_for_everyone([f for f in chunks if not f.running()])
    Path(g).touch()
    assert blocker.result(timeout=WAIT) is True


@pytest.mark.timeout(120)
def test_nested_map_iterator_closed_notifies_its_queued_chunks(make_executor):
    ex = make_executor(1)
    cancelled, not_done = ex.submit(nested_map_given_up, 30).result(timeout=WAIT * 2)
    assert cancelled > 0
    assert not_done == 0, "a nested map's cancelled chunks were not notified"
    # the worker is not disturbed by the withdrawn children
    assert list(ex.map(abs, range(-5, 5))) == [abs(i) for i in range(-5, 5)]

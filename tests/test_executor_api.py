"""The `concurrent.futures.Executor` contract, adapted from CPython's
Lib/test/test_concurrent_futures/ (ExecutorTest, WaitTests, AsCompletedTests, shutdown tests).

Cross-process "events" are files: a task waits for a path to exist, the test creates it.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import os
import pickle
import textwrap
import threading
import time
import weakref
from concurrent import futures
from concurrent.futures import Future
from pathlib import Path
from typing import Iterator

import pytest

from dtm_executor import BrokenDTMExecutor, DTMExecutor


# -- task functions (module level: workers import this module) ---------------------------
def mul(x, y):
    return x * y


def neg(x):
    return -x


def capture(*args, **kwargs):
    return args, kwargs


def sleep_return(t, value):
    time.sleep(t)
    return value


def wait_file(path, timeout=60.0):
    """Block until ``path`` exists (a cross-process event)."""
    end = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > end:
            raise TimeoutError(f"{path} was never created")
        time.sleep(0.005)
    return True


def wait_and_raise(path):
    wait_file(path)
    raise Exception("this is an exception")


class MyObject:
    def my_method(self):
        pass


def make_dummy_object(_):
    return MyObject()


_init_value = None


def init_worker(value, pid_file_dir=None):
    global _init_value
    _init_value = value


def get_init_value():
    return _init_value


def bad_initializer():
    raise ValueError("initializer exploded on purpose")


class FileEvent:
    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def set(self) -> None:
        Path(self.path).touch()


@pytest.fixture
def event(tmp_path: Path) -> Iterator:
    """Factory of file events; all are set at teardown so no worker stays blocked."""
    made: list[FileEvent] = []

    def make() -> FileEvent:
        ev = FileEvent(tmp_path / f"event-{len(made)}")
        made.append(ev)
        return ev

    yield make
    for ev in made:
        ev.set()


def _future(state: str) -> Future:
    f: Future = Future()
    if state == "cancelled":
        f.cancel()
    elif state == "cancelled_notified":
        f.cancel()
        f.set_running_or_notify_cancel()
    elif state == "exception":
        f.set_exception(OSError())
    elif state == "success":
        f.set_result(42)
    elif state == "running":
        f.set_running_or_notify_cancel()
    return f


# -- ExecutorTest ---------------------------------------------------------------------------
def test_submit(ex2):
    assert ex2.submit(pow, 2, 8).result() == 256


def test_submit_keyword(ex2):
    assert ex2.submit(mul, 2, y=8).result() == 16
    assert ex2.submit(capture, 1, self=2, fn=3).result() == ((1,), {"self": 2, "fn": 3})
    with pytest.raises(TypeError):
        ex2.submit(fn=capture, arg=1)
    with pytest.raises(TypeError):
        ex2.submit(arg=1)


def test_futures_are_standard_futures(ex2):
    f = ex2.submit(mul, 6, 7)
    assert isinstance(f, futures.Future)
    assert f.result(timeout=30) == 42
    assert f.done() and not f.cancelled() and not f.running()
    assert f.exception() is None
    seen = []
    f.add_done_callback(seen.append)  # already done: called at once
    assert seen == [f]


def test_map_ordering(ex2):
    assert list(ex2.map(neg, range(200))) == [-i for i in range(200)]
    assert list(ex2.map(pow, range(10), range(10))) == list(map(pow, range(10), range(10)))


def test_map_several_iterables_shortest_wins(ex2):
    assert list(ex2.map(mul, range(10), range(3))) == [0, 1, 4]
    assert list(ex2.map(mul, range(3), range(10))) == [0, 1, 4]
    # an endless iterable beside a finite one
    assert list(ex2.map(mul, itertools.count(), "ab")) == ["", "b"]
    assert list(ex2.map(mul, range(5), [])) == []


def test_map_empty(ex2):
    assert list(ex2.map(neg, [])) == []


def test_map_chunksize(ex2):
    expected = list(map(pow, range(10), range(10)))
    for chunksize in (1, 3, 10, 1000):
        assert list(ex2.map(pow, range(10), range(10), chunksize=chunksize)) == expected
    with pytest.raises(ValueError):
        ex2.map(neg, range(3), chunksize=0)


def test_map_exception(ex2):
    it = ex2.map(divmod, [1, 1, 1, 1], [2, 3, 0, 5])
    assert next(it) == (0, 1)
    assert next(it) == (0, 1)
    with pytest.raises(ZeroDivisionError):
        next(it)


def test_map_exception_inside_a_chunk(ex2):
    # the failing item shares its chunk with items before it: those are yielded first
    it = ex2.map(divmod, [1] * 6, [2, 3, 4, 0, 5, 6], chunksize=6)
    assert [next(it) for _ in range(3)] == [(0, 1), (0, 1), (0, 1)]
    with pytest.raises(ZeroDivisionError):
        next(it)


def test_map_timeout(ex2):
    results = []
    with pytest.raises(futures.TimeoutError):
        for r in ex2.map(time.sleep, [0, 0, 3], timeout=1.5):
            results.append(r)
    assert results == [None, None]


def test_map_endless_generator_is_consumed_lazily(ex2):
    pulled = 0

    def endless():
        nonlocal pulled
        for i in itertools.count():
            pulled += 1
            yield i

    it = ex2.map(neg, endless())
    assert list(itertools.islice(it, 5000)) == [-i for i in range(5000)]
    it.close()
    # only a window of chunks is read ahead of the consumer: at most 4 windows of chunks (in
    # flight, or done and waiting for the consumer), each of at most 65536 items (see _map)
    from dtm_executor import _map

    window = 2 * ex2.max_workers + 2  # ChunkSizer.window() once durations are known
    assert pulled <= 5000 + 4 * window * _map._MAX_CHUNK


def test_map_reads_ahead_a_bounded_number_of_slow_items(ex2):
    pulled = 0

    def source():
        nonlocal pulled
        for _ in range(10**9):
            pulled += 1
            yield 0.005

    it = ex2.map(sleep_return, source(), itertools.repeat(1))
    assert sum(itertools.islice(it, 40)) == 40
    assert pulled <= 40 + 100, pulled
    it.close()


def test_map_100k_trivial_items(ex2):
    n = 100_000
    assert list(ex2.map(neg, range(n))) == [-i for i in range(n)]


def test_map_free_reference(ex2):
    # Issue #14406: the result iterator keeps no reference to results it has yielded
    for obj in ex2.map(make_dummy_object, range(10)):
        wr = weakref.ref(obj)
        del obj
        gc.collect()
        assert wr() is None


def test_no_stale_references(ex2):
    # Issue #16284: the executor does not hold on to a finished task's callable
    obj = MyObject()
    collected = threading.Event()
    wr = weakref.ref(obj, lambda _: collected.set())
    ex2.submit(obj.my_method).result(timeout=30)
    del obj
    gc.collect()
    assert collected.wait(5), "stale reference to the submitted bound method's object"
    assert wr() is None


def test_shutdown_race_issue12456(make_executor):
    ex = make_executor(2)
    ex.map(str, [2] * 3)
    ex.shutdown()


def test_max_workers_invalid():
    for number in (0, -1):
        with pytest.raises(ValueError, match="max_workers"):
            DTMExecutor(max_workers=number)
    for bad in (1.5, "2", True):
        with pytest.raises((ValueError, TypeError)):
            DTMExecutor(max_workers=bad)


def test_other_invalid_arguments(proctools):
    before = set(proctools.live_children())
    with pytest.raises(ValueError):
        DTMExecutor(1, max_threads=1)
    with pytest.raises(ValueError):
        DTMExecutor(1, transport="no-such-transport")
    with pytest.raises(TypeError):
        DTMExecutor(1, initializer=42)
    with pytest.raises(pickle.PicklingError):
        DTMExecutor(1, initializer=init_worker, initargs=(threading.Lock(),))
    # none of these left a worker behind
    assert proctools.wait_until(lambda: not set(proctools.live_children()) - before, 10)


def test_unknown_option_is_a_TypeError_with_its_name(proctools):
    before = set(proctools.live_children())
    with pytest.raises(TypeError, match="unexpected keyword argument 'no_such_option'"):
        DTMExecutor(1, no_such_option=True)  # a typo must not run with the defaults
    assert not set(proctools.live_children()) - before


def test_default_max_workers(make_executor):
    ex = make_executor()
    assert ex.max_workers >= 1
    assert ex.submit(pow, 3, 2).result(timeout=30) == 9


# -- initializer ------------------------------------------------------------------------------
def test_initializer(make_executor):
    ex = make_executor(2, initializer=init_worker, initargs=("initialized",))
    fs = [ex.submit(get_init_value) for _ in range(20)]
    assert [f.result(timeout=30) for f in fs] == ["initialized"] * 20


def test_initializer_failure_breaks_executor(make_executor):
    ex = make_executor(2, initializer=bad_initializer)
    assert issubclass(BrokenDTMExecutor, futures.BrokenExecutor)
    with pytest.raises(BrokenDTMExecutor) as info:
        ex.submit(pow, 2, 3).result(timeout=30)
    assert isinstance(info.value, futures.BrokenExecutor)
    assert "initializer exploded on purpose" in str(info.value)
    with pytest.raises((BrokenDTMExecutor, RuntimeError)):
        ex.submit(pow, 2, 3).result(timeout=30)


# -- shutdown ---------------------------------------------------------------------------------
def test_run_after_shutdown(make_executor):
    ex = make_executor(1)
    ex.shutdown()
    with pytest.raises(RuntimeError):
        ex.submit(pow, 2, 5)
    with pytest.raises(RuntimeError):
        ex.map(neg, range(3))
    ex.shutdown()  # idempotent


def test_shutdown_waits_for_all_work(make_executor):
    # test_hang_issue12364
    ex = make_executor(5)
    fs = [ex.submit(time.sleep, 0.1) for _ in range(50)]
    ex.shutdown()
    for f in fs:
        assert f.done()
        assert f.result() is None


def test_shutdown_cancel_futures(make_executor):
    ex = make_executor(5)
    fs = [ex.submit(time.sleep, 0.1) for _ in range(50)]
    # as with a pre-started ProcessPoolExecutor, let the workers begin before shutting down
    futures.wait(fs[:1])
    ex.shutdown(cancel_futures=True)
    cancelled = [f for f in fs if f.cancelled()]
    assert len(cancelled) > 20
    others = [f for f in fs if not f.cancelled()]
    for f in others:
        assert f.done(), f._state
        assert f.exception() is None
    assert len(others) > 0


def test_shutdown_no_wait(make_executor, proctools):
    ex = make_executor(2)
    pids = [p.pid for p in ex._pool.procs.values()]
    res = ex.map(abs, range(-5, 5))
    fs = [ex.submit(sleep_return, 0.3, i) for i in range(4)]
    t0 = time.monotonic()
    ex.shutdown(wait=False)
    assert time.monotonic() - t0 < 0.3 * 4  # it did not wait for the tasks
    with pytest.raises(RuntimeError):
        ex.submit(pow, 2, 2)
    assert list(res) == [abs(v) for v in range(-5, 5)]
    assert [f.result(timeout=30) for f in fs] == [0, 1, 2, 3]
    assert proctools.wait_until(lambda: not any(map(proctools.pid_alive, pids)), 20)


def test_shutdown_after_cancel_does_not_hang(make_executor):
    # gh-94440
    ex = make_executor(1)
    ex.submit(int).result(timeout=30)
    ex.submit(int).cancel()
    done = threading.Event()
    threading.Thread(target=lambda: (ex.shutdown(wait=True), done.set()), daemon=True).start()
    assert done.wait(10), "shutdown hung after a cancelled submit"


def test_cancel_queued_futures(make_executor, event):
    ex = make_executor(1)
    ev = event()
    blocker = ex.submit(wait_file, ev.path)
    queued = [ex.submit(mul, i, 2) for i in range(10)]
    try:
        # the running task cannot be cancelled; the last queued ones can
        while not blocker.running() and not blocker.done():
            time.sleep(0.01)
        assert not blocker.cancel()
        for f in queued[5:]:
            assert f.cancel()
            assert f.cancelled()
            with pytest.raises(futures.CancelledError):
                f.result()
    finally:
        ev.set()
    assert blocker.result(timeout=30) is True
    for i, f in enumerate(queued):
        if not f.cancelled():
            assert f.result(timeout=30) == 2 * i
    assert sum(f.cancelled() for f in queued) >= 5


def test_context_manager(proctools):
    with DTMExecutor(2) as ex:
        pids = [p.pid for p in ex._pool.procs.values()]
        assert list(ex.map(abs, range(-5, 5))) == [5, 4, 3, 2, 1, 0, 1, 2, 3, 4]
        f = ex.submit(sleep_return, 0.2, "late")
    assert f.done() and f.result() == "late"  # __exit__ waited for it
    with pytest.raises(RuntimeError):
        ex.submit(pow, 2, 2)
    assert proctools.wait_until(lambda: not any(map(proctools.pid_alive, pids)), 10)


def test_del_shutdown(proctools):
    # a dropped executor is shut down (after its work), as ProcessPoolExecutor's is
    ex = DTMExecutor(2)
    wr = weakref.ref(ex)
    pids = [p.pid for p in ex._pool.procs.values()]
    try:
        res = ex.map(abs, range(-5, 5))
        del ex
        assert list(res) == [abs(v) for v in range(-5, 5)]
        del res
        gc.collect()
        assert wr() is None, "an executor nobody references was not garbage-collected"
        assert proctools.wait_until(lambda: not any(map(proctools.pid_alive, pids)), 20)
    finally:
        if wr() is not None:
            wr().shutdown()


def test_unreferenced_executor_finishes_its_work(proctools):
    # as with ProcessPoolExecutor: dropping the executor does not drop submitted work
    ex = DTMExecutor(2)
    wr = weakref.ref(ex)
    pids = [p.pid for p in ex._pool.procs.values()]
    try:
        f = ex.submit(sleep_return, 0.2, "done")
        del ex
        gc.collect()
        assert f.result(timeout=30) == "done"
        gc.collect()
        assert wr() is None, "an executor nobody references was not garbage-collected"
        assert proctools.wait_until(lambda: not any(map(proctools.pid_alive, pids)), 20)
    finally:
        if wr() is not None:
            wr().shutdown()


# -- WaitTests --------------------------------------------------------------------------------
def test_wait_duplicate_future(ex2):
    # bpo-20369
    f = ex2.submit(mul, 1, 2)
    done, not_done = futures.wait([f, f], return_when=futures.ALL_COMPLETED)
    assert done == {f} and not_done == set()


def test_wait_first_completed(ex2, event):
    ev = event()
    cancelled = _future("cancelled")
    f1 = ex2.submit(mul, 21, 2)
    f2 = ex2.submit(wait_file, ev.path)
    try:
        done, not_done = futures.wait([cancelled, f1, f2], return_when=futures.FIRST_COMPLETED)
        assert done == {f1}
        assert not_done == {cancelled, f2}
    finally:
        ev.set()
    f2.result(timeout=30)


def test_wait_first_completed_some_already_completed(ex2, event):
    ev = event()
    cn, ok = _future("cancelled_notified"), _future("success")
    f1 = ex2.submit(wait_file, ev.path)
    try:
        finished, pending = futures.wait([cn, ok, f1], return_when=futures.FIRST_COMPLETED)
        assert finished == {cn, ok}
        assert pending == {f1}
    finally:
        ev.set()
    f1.result(timeout=30)


def test_wait_first_exception(ex2, event):
    ev1, ev2 = event(), event()
    try:
        f1 = ex2.submit(mul, 2, 21)
        f2 = ex2.submit(wait_and_raise, ev1.path)
        f3 = ex2.submit(wait_file, ev2.path)

        def wait_for_f1():
            f1.result()
            ev1.set()

        t = threading.Thread(target=wait_for_f1)
        t.start()
        finished, pending = futures.wait([f1, f2, f3], return_when=futures.FIRST_EXCEPTION)
        assert finished == {f1, f2}
        assert pending == {f3}
        t.join(30)
    finally:
        ev1.set()
        ev2.set()
    f3.result(timeout=30)


def test_wait_first_exception_some_already_complete(ex2, event):
    ev = event()
    ok, cancelled, cn = _future("success"), _future("cancelled"), _future("cancelled_notified")
    f1 = ex2.submit(divmod, 21, 0)
    f2 = ex2.submit(wait_file, ev.path)
    try:
        finished, pending = futures.wait(
            [ok, cancelled, cn, f1, f2], return_when=futures.FIRST_EXCEPTION
        )
        assert finished == {ok, cn, f1}
        assert pending == {cancelled, f2}
    finally:
        ev.set()
    f2.result(timeout=30)


def test_wait_first_exception_one_already_failed(ex2, event):
    ev = event()
    failed = _future("exception")
    f1 = ex2.submit(wait_file, ev.path)
    try:
        finished, pending = futures.wait([failed, f1], return_when=futures.FIRST_EXCEPTION)
        assert finished == {failed}
        assert pending == {f1}
    finally:
        ev.set()
    f1.result(timeout=30)


def test_wait_all_completed(ex2):
    ok, cn, failed = _future("success"), _future("cancelled_notified"), _future("exception")
    f1 = ex2.submit(divmod, 2, 0)
    f2 = ex2.submit(mul, 2, 21)
    finished, pending = futures.wait([ok, cn, failed, f1, f2], return_when=futures.ALL_COMPLETED)
    assert finished == {ok, cn, failed, f1, f2}
    assert pending == set()
    assert isinstance(f1.exception(), ZeroDivisionError)
    assert f2.result() == 42


def test_wait_timeout(ex2, event):
    ev = event()
    cn, failed, ok = _future("cancelled_notified"), _future("exception"), _future("success")
    f = ex2.submit(wait_file, ev.path)
    try:
        finished, pending = futures.wait(
            [cn, failed, ok, f], timeout=0.05, return_when=futures.ALL_COMPLETED
        )
        assert finished == {cn, failed, ok}
        assert pending == {f}
    finally:
        ev.set()
    f.result(timeout=30)


def test_result_timeout(ex2, event):
    ev = event()
    f = ex2.submit(wait_file, ev.path)
    try:
        with pytest.raises(futures.TimeoutError):
            f.result(timeout=0.1)
        with pytest.raises(futures.TimeoutError):
            f.exception(timeout=0.1)
    finally:
        ev.set()
    assert f.result(timeout=30) is True


# -- AsCompletedTests -------------------------------------------------------------------------
def test_as_completed_no_timeout(ex2):
    done = {_future("cancelled_notified"), _future("exception"), _future("success")}
    f1 = ex2.submit(mul, 2, 21)
    f2 = ex2.submit(mul, 7, 6)
    assert set(futures.as_completed(done | {f1, f2})) == done | {f1, f2}


def test_as_completed_order(ex2):
    slow = ex2.submit(sleep_return, 1.0, "slow")
    fast = ex2.submit(sleep_return, 0.0, "fast")
    assert [f.result() for f in futures.as_completed([slow, fast], timeout=30)] == ["fast", "slow"]


@pytest.mark.parametrize("timeout", [0, 0.1])
def test_as_completed_times_out(ex2, event, timeout):
    ev = event()
    already = {_future("cancelled_notified"), _future("exception"), _future("success")}
    f = ex2.submit(wait_file, ev.path)
    got = set()
    try:
        with pytest.raises(futures.TimeoutError):
            for done in futures.as_completed(already | {f}, timeout):
                got.add(done)
    finally:
        ev.set()
    assert got == already
    f.result(timeout=30)


def test_as_completed_duplicate_futures(ex2):
    f = ex2.submit(sleep_return, 0.2, 1)
    assert len(list(futures.as_completed(itertools.repeat(f, 3)))) == 1


# -- asyncio ------------------------------------------------------------------------------------
def test_asyncio_run_in_executor(ex2):
    async def main():
        loop = asyncio.get_running_loop()
        results = await asyncio.gather(*(loop.run_in_executor(ex2, mul, i, 3) for i in range(20)))
        with pytest.raises(ZeroDivisionError):
            await loop.run_in_executor(ex2, divmod, 1, 0)
        return results

    assert asyncio.run(main()) == [3 * i for i in range(20)]


# -- interpreter exit (subprocess scripts) ----------------------------------------------------
_SLEEP_AND_PRINT = """\
import sys, time
from dtm_executor import DTMExecutor

def sleep_and_print(t, msg):
    time.sleep(t)
    print(msg)
    sys.stdout.flush()

"""


def _run(run_script, body: str, timeout: float = 60):
    run = run_script(_SLEEP_AND_PRINT + textwrap.dedent(body))
    run.wait(timeout)
    return run


def test_interpreter_shutdown_waits_for_work(run_script):
    r = _run(run_script, """\
        if __name__ == "__main__":
            t = DTMExecutor(3)
            t.submit(sleep_and_print, 1.0, "apple")
        """)
    assert r.stderr == ""
    assert r.proc.returncode == 0
    assert r.stdout.strip() == "apple"


def test_submit_after_interpreter_shutdown(run_script):
    r = run_script("""\
        import atexit
        @atexit.register
        def run_last():
            try:
                t.submit(id, None)
            except RuntimeError:
                print("runtime-error")
                raise
        from dtm_executor import DTMExecutor
        if __name__ == "__main__":
            t = DTMExecutor(2)
            t.submit(id, 42).result()
        """)
    r.wait(60)
    assert "RuntimeError: cannot schedule new futures" in r.stderr
    assert r.stdout.strip() == "runtime-error"


def test_shutdown_no_wait_at_exit_does_not_hang(run_script):
    # gh-83386
    r = _run(run_script, """\
        if __name__ == "__main__":
            t = DTMExecutor(3)
            t.submit(sleep_and_print, 1.0, "apple")
            t.shutdown(wait=False)
        """)
    assert r.stderr == ""
    assert r.stdout.strip() == "apple"


def test_cancel_futures_wait_false_at_exit(run_script):
    r = _run(run_script, """\
        if __name__ == "__main__":
            t = DTMExecutor(2)
            t.submit(sleep_and_print, 0.1, "apple")
            t.shutdown(wait=False, cancel_futures=True)
        """)
    assert r.stderr == ""
    assert r.stdout.strip() in ("apple", "")

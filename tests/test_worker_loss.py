"""Losing workers, on the local and the TCP transports: a parent waiting on children never hangs,
``max_retries`` holds for nested tasks, a task that kills its worker (a poison task) fails alone,
and dead workers are replaced (with the initializer).

``DTM_LOSS_TRIALS=100`` runs the waiting-parent scenarios 100 times each (the default is 3).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from dtm_executor import DTMExecutor, WorkerLostError, current_executor

pytestmark = pytest.mark.timeout(600)

TRANSPORTS = [
    pytest.param({}, id="local"),
    pytest.param({"transport": "tcp", "hosts": ["localhost slots=4"]}, id="tcp"),
]
TRIALS = int(os.environ.get("DTM_LOSS_TRIALS", "3"))


def _wait_until(pred, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            return False
        time.sleep(0.02)
    return True


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def _worker_pids(ex: DTMExecutor) -> dict[int, int]:
    """rank -> pid of the live worker processes."""
    return {r: p.pid for r, p in list(ex._pool.procs.items()) if _alive(p.pid)}


# -- a waiting parent whose children are on a worker that dies ---------------------------------
def child(i: int, piddir: str) -> int:
    Path(piddir, str(os.getpid())).touch()
    time.sleep(0.3)
    return i


def parent(n: int, pidfile: str, piddir: str) -> int:
    Path(pidfile).write_text(str(os.getpid()))
    ex = current_executor()
    fs = [ex.submit(child, i, piddir) for i in range(n)]
    return sum(f.result() for f in fs)


@pytest.mark.parametrize("victim", ["other", "thief"])
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_worker_lost_under_a_waiting_parent_never_hangs(transport, victim, tmp_path) -> None:
    """40 children of one parent spread over 4 workers by stealing (and re-stealing); a worker
    other than the parent's is killed 0.8 s in: the parent's sum is right every time. ``thief``
    kills one that has run the parent's children."""
    for k in range(TRIALS):
        pidfile = tmp_path / f"parent{k}"
        piddir = tmp_path / f"children{k}"
        piddir.mkdir()
        with DTMExecutor(4, **transport) as ex:
            fut = ex.submit(parent, 40, str(pidfile), str(piddir))
            assert _wait_until(lambda p=pidfile: p.exists() and p.read_text(), 60)
            ppid = int(pidfile.read_text())
            time.sleep(0.8)
            others = [pid for pid in _worker_pids(ex).values() if pid != ppid]
            if victim == "thief":
                ran = {int(p.name) for p in piddir.iterdir()} - {ppid}
                others = [pid for pid in others if pid in ran] or others
            os.kill(others[k % len(others)], signal.SIGKILL)
            assert fut.result(timeout=60) == sum(range(40)), f"trial {k}"


# -- max_retries reaches the workers' own nodes ------------------------------------------------
def doomed_child(pidfile: str) -> str:
    Path(pidfile).write_text(str(os.getpid()))
    time.sleep(3)
    return "finished"


def parent_of_doomed(pidfile: str, mypidfile: str) -> str:
    Path(mypidfile).write_text(str(os.getpid()))
    f = current_executor().submit(doomed_child, pidfile)
    while not f.done():  # poll without waiting: the child is taken by another worker
        time.sleep(0.01)
    try:
        return f.result()
    except WorkerLostError as e:
        return "lost: " + str(e)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_max_retries_zero_holds_for_nested_tasks(transport, tmp_path) -> None:
    child_pid, parent_pid = tmp_path / "child", tmp_path / "parent"
    with DTMExecutor(3, max_retries=0, **transport) as ex:
        fut = ex.submit(parent_of_doomed, str(child_pid), str(parent_pid))
        assert _wait_until(lambda: child_pid.exists() and child_pid.read_text(), 60)
        assert child_pid.read_text() != parent_pid.read_text()
        os.kill(int(child_pid.read_text()), signal.SIGKILL)
        out = fut.result(timeout=60)
        assert out.startswith("lost: ") and "doomed_child" in out and "max_retries=0" in out, out


# -- poison tasks --------------------------------------------------------------------------------
def exits(x: int) -> int:
    os._exit(1)


def segfaults(x: int) -> int:
    os.kill(os.getpid(), signal.SIGSEGV)
    time.sleep(10)
    return x


def slow_double(x: int) -> int:
    time.sleep(0.01)
    return 2 * x


def _init(marker: str) -> None:
    global INITIALIZED
    INITIALIZED = marker


INITIALIZED = None


def initialized(_: int) -> tuple[int, str | None]:
    time.sleep(0.05)
    return os.getpid(), INITIALIZED


@pytest.mark.parametrize("killer", [exits, segfaults], ids=["os._exit", "segfault"])
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_poison_task_fails_alone_and_the_pool_recovers(transport, killer) -> None:
    """The poison task kills max_retries + 1 workers, then fails naming itself; the tasks queued
    beside it all succeed; the pool is back to full strength, every worker initialized."""
    with DTMExecutor(3, max_retries=1, initializer=_init, initargs=("yes",), **transport) as ex:
        n = len(_worker_pids(ex))
        good = [ex.submit(slow_double, i) for i in range(100)]
        bad = ex.submit(killer, 0)
        good += [ex.submit(slow_double, i) for i in range(100, 200)]
        with pytest.raises(WorkerLostError, match=killer.__name__) as ei:
            bad.result(timeout=120)
        assert "max_retries=1" in str(ei.value)
        assert [f.result(timeout=120) for f in good] == [2 * i for i in range(200)]
        assert len(ex._node.replacements) == 2  # exactly max_retries + 1 workers died
        assert _wait_until(lambda: len(_worker_pids(ex)) == n and len(ex._node.workers) == n, 60)
        got = {ex.submit(initialized, i).result(timeout=60)[1] for i in range(30)}
        assert got == {"yes"}
        assert list(ex.map(abs, range(-50, 0))) == list(range(50, 0, -1))


def test_poison_task_with_default_retries_kills_four_workers_then_fails() -> None:
    with DTMExecutor(2) as ex:
        fut = ex.submit(exits, 0)
        with pytest.raises(WorkerLostError, match=r"exits.*max_retries=3"):
            fut.result(timeout=120)
        assert len(ex._node.replacements) == 4
        assert ex.submit(slow_double, 4).result(timeout=60) == 8


def maybe_exits(x: int) -> int:
    if x == 37:
        os._exit(3)
    return x * x


def test_poison_item_in_map_fails_at_that_item() -> None:
    # max_retries=1: with 0, an item whose result was still held for batching when item 37 took
    # its worker down would fail too (it was on the lost worker), as the rule says
    with DTMExecutor(3, max_retries=1) as ex:
        it = ex.map(maybe_exits, range(100), chunksize=1)
        got = [next(it) for _ in range(37)]
        assert got == [x * x for x in range(37)]
        with pytest.raises(WorkerLostError, match="maybe_exits"):
            next(it)


# -- replacement -------------------------------------------------------------------------------
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_dead_workers_are_replaced_with_the_initializer(transport) -> None:
    with DTMExecutor(4, initializer=_init, initargs=("init",), **transport) as ex:
        assert sorted(x * 2 for x in range(100)) == sorted(ex.map(slow_double, range(100)))
        pids = _worker_pids(ex)
        assert len(pids) == 4
        for rank in list(pids)[:2]:
            os.kill(pids[rank], signal.SIGKILL)
        killed = {pids[r] for r in list(pids)[:2]}
        assert _wait_until(lambda: not killed & set(_worker_pids(ex).values()), 60)
        assert _wait_until(lambda: len(_worker_pids(ex)) == 4 and len(ex._node.workers) == 4, 60)
        now = _worker_pids(ex)
        assert len(set(now.values()) - set(pids.values())) == 2
        seen: dict[int, str | None] = {}
        for _ in range(20):  # every live worker runs tasks, with its initializer's global
            seen.update(ex.map(initialized, range(40)))
            if set(seen) >= set(now.values()):
                break
        assert set(seen) >= set(now.values())
        assert set(seen.values()) == {"init"}


def test_a_replacement_that_cannot_start_is_reported_not_retried(caplog) -> None:
    with DTMExecutor(3, initializer=_fail_above_rank, initargs=(3,)) as ex:
        assert ex.submit(abs, -3).result(timeout=60) == 3
        pids = _worker_pids(ex)
        os.kill(pids[1], signal.SIGKILL)
        assert _wait_until(lambda: any("could not start" in r.getMessage() for r in caplog.records), 60)
        os.kill(pids[2], signal.SIGKILL)  # not replaced any more
        assert list(ex.map(slow_double, range(50))) == [2 * i for i in range(50)]
        assert len(ex._node.replacements) == 1
        assert ex._node.workers == [3]
    starts = [r for r in caplog.records if "could not start" in r.getMessage()]
    assert len(starts) == 1 and "refusing to start" in starts[0].getMessage()


def _fail_above_rank(last: int) -> None:
    """An initializer that fails in replacements only (their ranks follow the first ones)."""
    if int(os.environ["DTM_EXECUTOR_RANK"]) > last:
        raise RuntimeError("refusing to start: a replacement")


# -- work the transport refuses to carry -------------------------------------------------------
def test_tasks_too_big_to_send_fail_and_the_rest_still_runs() -> None:
    """Dispatches over TCP's frame limit fail their tasks; the workers they were meant for must
    not look served (their later requests were ignored as stale, and the queue hung)."""
    from dtm_executor import SerializationError

    big = b"x" * (1 << 17)
    with DTMExecutor(2, transport="tcp", max_frame_bytes=1 << 16) as ex:
        fs = [ex.submit(len, big) for _ in range(100)]
        small = [ex.submit(abs, -i) for i in range(100)]
        for f in fs:
            with pytest.raises(SerializationError, match="could not be sent"):
                f.result(timeout=60)
        assert [f.result(timeout=60) for f in small] == list(range(100))

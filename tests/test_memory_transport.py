"""The hub's and the workers' state machines, on the memory transport: no process is started, so
every test takes a fraction of a second.

The hub tests run a real rank 0 (`Node` with its hub) and play the workers themselves: they send
the messages a worker sends and read what the hub answers. The worker tests run real workers (a
``transport="memory"`` executor) and watch their messages through the network's tap. Messages
are read by kind and position, as on the wire (plain tuples, whatever the scheduler names them).
"""

from __future__ import annotations

import collections
import pickle
import threading
import time
from concurrent import futures as cf
from typing import Any, Iterator

import pytest

from dtm_executor import BrokenDTMExecutor, DTMExecutor, WorkerLostError, current_executor
from dtm_executor._transports.memory import MemoryNetwork

from dtm_executor._scheduler import Kind as K
from dtm_executor._scheduler import Node, TaskKind

CALL = TaskKind.CALL

pytestmark = pytest.mark.timeout(30)

WAIT = 5.0  # seconds a message may take to arrive (it takes microseconds)


class Hub:
    """A real rank 0 with ``n`` worker ranks that the test plays."""

    def __init__(self, n: int = 2, max_retries: int = 3) -> None:
        self.net = MemoryNetwork(n + 1)
        self.node = Node(self.net.end(0), hub=True, worker=False, workers=list(range(1, n + 1)))
        self.node.max_retries = max_retries
        self.node.on_lost = lambda r: self.node.worker_lost(r, f"worker rank {r}")
        self.ends = {r: self.net.end(r) for r in range(1, n + 1)}
        self.seen: dict[int, list[tuple[Any, ...]]] = collections.defaultdict(list)
        self.node.start()

    def submit(self, fn: Any, *args: Any) -> cf.Future[Any]:
        hub = self.node.hub
        task, fut = hub.make_task(fn, (args, {}), CALL)
        hub.submit(task)
        return fut

    def send(self, rank: int, *msg: Any) -> None:
        self.ends[rank].send(0, [pickle.dumps(msg, 5)])

    def req(self, rank: int, want: int, idle: bool = True, seen: int = 0) -> None:
        self.send(rank, K.REQ, want, idle, seen)

    def expect(self, rank: int, kind: int, timeout: float = WAIT) -> tuple[Any, ...]:
        """The next message of ``kind`` to ``rank`` (others are kept in ``seen``)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            got = self.ends[rank].recv(max(0.0, end - time.monotonic()))
            if got is None or got[1] is None:
                continue
            msg = pickle.loads(got[1][0])
            if msg[0] == kind:
                return msg
            self.seen[rank].append(msg)
        raise AssertionError(f"rank {rank} got no message of kind {kind} in {timeout} s")

    def quiet(self, rank: int, kind: int, seconds: float = 0.2) -> None:
        """No message of ``kind`` reaches ``rank`` for a while."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            got = self.ends[rank].recv(max(0.0, end - time.monotonic()))
            if got is not None and got[1] is not None:
                msg = pickle.loads(got[1][0])
                assert msg[0] != kind, f"rank {rank} got {msg[:2]}"
                self.seen[rank].append(msg)

    def tids(self, msg: tuple[Any, ...]) -> list[int]:
        return [desc[1] for desc in msg[1]]  # a task descriptor is (owner, tid, ...)

    def answer(self, rank: int, tid: int, value: Any) -> None:
        self.send(rank, K.RESULTS, [(tid, 1, pickle.dumps(value), 0, 0.0)])

    def close(self) -> None:
        self.node.close()
        self.net.close()


@pytest.fixture
def hub() -> Iterator[Hub]:
    h = Hub(2)
    try:
        yield h
    finally:
        h.close()


# -- the hub -------------------------------------------------------------------------------------
def test_an_idle_worker_gets_its_want_but_no_more_than_a_fair_share(hub: Hub) -> None:
    fs = [hub.submit(abs, -i) for i in range(10)]
    hub.req(1, want=100)  # asks for much: gets half of the queue (two workers)
    assert len(hub.tids(hub.expect(1, K.TASKS))) == 5
    hub.req(2, want=2)  # asks for little: gets that
    assert len(hub.tids(hub.expect(2, K.TASKS))) == 2
    assert all(f.running() for f in fs[:7]) and not any(f.running() for f in fs[7:])


def test_a_request_sent_before_the_last_dispatch_arrived_is_stale(hub: Hub) -> None:
    for i in range(4):
        hub.submit(abs, i)
    hub.req(1, want=1, seen=0)
    first = hub.tids(hub.expect(1, K.TASKS))
    hub.req(1, want=1, seen=0)  # written before it had the dispatch: ignored
    hub.quiet(1, K.TASKS)
    hub.req(1, want=1, seen=1)  # written after: served
    second = hub.tids(hub.expect(1, K.TASKS))
    assert len(first) == len(second) == 1 and first != second


def test_results_settle_futures_once(hub: Hub) -> None:
    f = hub.submit(abs, -3)
    hub.req(1, want=1)
    (tid,) = hub.tids(hub.expect(1, K.TASKS))
    hub.answer(1, tid, 3)
    assert f.result(timeout=WAIT) == 3
    hub.answer(1, tid, 99)  # a task run twice (it outlived a worker) answers twice: the first wins
    time.sleep(0.05)
    assert f.result() == 3 and hub.node.hub.outstanding == 0


def test_an_idle_worker_is_sent_to_steal_from_each_busy_worker_in_turn() -> None:
    h = Hub(3)
    try:
        h.req(1, want=1)  # idle, and nothing queued: find it a victim
        victims = [r for r in (2, 3) if _got_steal(h, r)]
        assert len(victims) == 1
        first = victims[0]
        h.send(first, K.NOWORK, 1)  # nothing there: the hub tries the other one at once
        other = 5 - first
        assert h.expect(other, K.STEAL, timeout=1.0)[1] == 1
        h.send(other, K.NOWORK, 1)  # nothing anywhere: it asks again later, not in a loop
        time.sleep(0.2)
        again = sum(1 for r in (2, 3) for m in _drain(h, r) if m[0] == K.STEAL)
        assert 1 <= again <= 20  # the hub polls every 20 ms at most
    finally:
        h.close()


def _got_steal(h: Hub, rank: int) -> bool:
    try:
        msg = h.expect(rank, K.STEAL, timeout=0.5)
    except AssertionError:
        return False
    h.seen[rank].append(msg)
    return msg[1] == 1


def _drain(h: Hub, rank: int) -> list[tuple[Any, ...]]:
    out = []
    while (got := h.ends[rank].recv(0.01)) is not None:
        if got[1] is not None:
            out.append(pickle.loads(got[1][0]))
    return out


def test_the_tasks_of_a_lost_worker_go_back_to_the_front_of_the_queue(hub: Hub) -> None:
    fs = [hub.submit(abs, -i) for i in range(3)]
    hub.req(1, want=1)
    (lost,) = hub.tids(hub.expect(1, K.TASKS))
    hub.net.cut(1)  # worker 1's process died
    assert hub.expect(2, K.LOST)[1] == 1  # the others are told
    hub.req(2, want=1)
    assert hub.tids(hub.expect(2, K.TASKS)) == [lost]  # first in line again
    hub.answer(2, lost, 0)
    assert fs[0].result(timeout=WAIT) == 0
    assert 1 not in hub.node.workers


def test_a_task_lost_more_than_max_retries_times_fails() -> None:
    h = Hub(2, max_retries=0)
    try:
        f = h.submit(abs, -1)
        h.req(1, want=1)
        h.expect(1, K.TASKS)
        h.net.cut(1)
        with pytest.raises(WorkerLostError, match="max_retries=0"):
            f.result(timeout=WAIT)
        h.net.cut(2)  # and with no worker left, the run is broken
        deadline = time.monotonic() + WAIT
        while h.node.broken is None and time.monotonic() < deadline:
            time.sleep(0.005)
        with pytest.raises(BrokenDTMExecutor, match="all workers are gone"):
            h.submit(abs, 1)
    finally:
        h.close()


def test_cancelled_tasks_do_not_use_up_a_workers_turn(hub: Hub) -> None:
    fs = [hub.submit(abs, -i) for i in range(3)]
    assert fs[0].cancel() and fs[1].cancel()
    hub.req(1, want=1)
    assert len(hub.tids(hub.expect(1, K.TASKS))) == 1 and fs[2].running()
    done, _ = cf.wait(fs[:2], timeout=WAIT)  # dropped when their turn came: waiters are told
    assert done == set(fs[:2])


def test_cancel_pending_tells_the_waiters_at_once(hub: Hub) -> None:
    fs = [hub.submit(abs, -i) for i in range(5)]
    hub.node.hub.cancel_pending()
    done, _ = cf.wait(fs, timeout=0)
    assert done == set(fs) and all(f.cancelled() for f in fs)
    assert hub.node.hub.outstanding == 0
    hub.req(1, want=5)
    hub.quiet(1, K.TASKS)


# -- the workers (real ones, watched through the tap) --------------------------------------------
class Tap:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.msgs: list[tuple[int, int, int]] = []  # (src, dest, kind)

    def __call__(self, src: int, dest: int, frames: list[memoryview]) -> None:
        kind = pickle.loads(frames[0])[0]
        with self.lock:
            self.msgs.append((src, dest, kind))

    def count(self, kind: int, src: int | None = None, dest: int | None = None) -> int:
        with self.lock:
            return sum(1 for s, d, k in self.msgs
                       if k == kind and (src is None or s == src) and (dest is None or d == dest))


@pytest.fixture
def tapped() -> Iterator[tuple[DTMExecutor, Tap]]:
    ex = DTMExecutor(2, transport="memory")
    tap = Tap()
    ex._pool.network.tap = tap
    try:
        yield ex, tap
    finally:
        GATE.set()
        ex.shutdown(wait=True, cancel_futures=True)
        GATE.clear()


GATE = threading.Event()  # every rank is a thread of this process: a plain event gates them all
RAN: list[tuple[str, int]] = []


def rank() -> int:
    return current_executor().getWorkerId()


def child(i: int) -> int:
    RAN.append(("child", rank()))
    return i


def parent_leaves_children_queued(n: int) -> int:
    """Queue ``n`` children here, then hold the worker (its token) without helping them."""
    ex = current_executor()
    fs = [ex.submit(child, i) for i in range(n)]
    assert GATE.wait(WAIT)
    return sum(f.result() for f in fs)


def test_an_idle_worker_steals_the_queued_children_of_a_busy_one(tapped: Any) -> None:
    ex, tap = tapped
    RAN.clear()
    f = ex.submit(parent_leaves_children_queued, 20)
    deadline = time.monotonic() + WAIT
    while len(RAN) < 5 and time.monotonic() < deadline:  # the other worker runs some of them
        time.sleep(0.005)
    busy = next(d for s, d, k in tap.msgs if k == K.TASKS and s == 0)  # the parent's worker
    GATE.set()
    assert f.result(timeout=WAIT) == sum(range(20))
    thief = {r for _, r in RAN} - {busy}
    assert thief, "no child ran elsewhere"
    (t,) = thief
    assert tap.count(K.STEAL, src=0) >= 1
    assert tap.count(K.TASKS, src=busy, dest=t) >= 1  # the loot goes straight to the thief


def long_task(seconds: float) -> int:
    time.sleep(seconds)
    return rank()


def test_a_victim_with_nothing_queued_says_nowork(tapped: Any) -> None:
    ex, tap = tapped
    victim = ex.submit(long_task, 0.3).result(timeout=WAIT)  # the other worker idles meanwhile
    assert tap.count(K.NOWORK, src=victim, dest=0) >= 1


def cancel_a_child() -> tuple[bool, bool]:
    fut = current_executor().submit(child, -1)  # queued here, not started
    return fut.cancel(), fut.cancelled()


def test_a_cancelled_local_child_never_runs(tapped: Any) -> None:
    ex, _ = tapped
    RAN.clear()
    assert ex.submit(cancel_a_child).result(timeout=WAIT) == (True, True)
    time.sleep(0.05)
    assert RAN == []


def child_of_lost(i: int) -> int:
    RAN.append(("child", rank()))
    assert GATE.wait(WAIT)
    return i


def parent_of_lost(n: int) -> int:
    ex = current_executor()
    fs = [ex.submit(child_of_lost, i) for i in range(n)]
    return sum(f.result() for f in fs)


def test_children_on_a_lost_worker_run_again_for_their_owner(tapped: Any) -> None:
    ex, tap = tapped
    RAN.clear()
    f = ex.submit(parent_of_lost, 6)
    deadline = time.monotonic() + WAIT
    while len({r for _, r in RAN}) < 2 and time.monotonic() < deadline:  # both workers hold some
        time.sleep(0.005)
    ranks = {r for _, r in RAN}
    assert len(ranks) == 2, "the children did not spread"
    owner = next(d for s, d, k in tap.msgs if k == K.TASKS and s == 0)  # the parent's worker
    (thief,) = ranks - {owner}
    ex._pool.lose(thief)
    time.sleep(0.05)
    GATE.set()
    assert f.result(timeout=WAIT) == sum(range(6))
    assert thief not in ex._node.workers

"""The hub (rank 0): the queue of top-level tasks, handed to workers that ask, and the steals
that find idle workers work elsewhere when the queue is empty.

Imports `protocol`, `task`, `ports` and the leaves `_serial`, `_futures`."""

from __future__ import annotations

import collections
import pickle
import threading
import time
from typing import Any, Callable

from .. import _serial
from .._futures import DTMFuture, notify_cancelled, set_running, settle
from .._serial import SerializationError, describe, dumps
from .ports import NodeServices
from .protocol import HubState, Kind, TaskKind
from .task import Task

# module globals: the hub reads them for every message, and an Enum attribute costs ~0.1 µs on
# Python 3.11
NONE, HUNGRY, IDLE, STEALING = HubState.NONE, HubState.HUNGRY, HubState.IDLE, HubState.STEALING


class Hub:
    """Rank 0's queue of top-level tasks; matches idle workers with work (its own or stolen).

    The ``on_*`` methods, `tick`, `forget_worker`, `add_worker`, `requeue` and `undelivered` run
    on the communication thread; `submit`, `make_task`, `cancel_pending` and `wait_settled` on
    the user's threads."""

    def __init__(self, node: NodeServices) -> None:
        self.node = node
        self.lock = threading.Lock()
        self.pending: collections.deque[Task] = collections.deque()
        self.state: dict[int, HubState] = {w: NONE for w in node.workers}
        self.want: dict[int, int] = {w: 1 for w in node.workers}
        self.tried: dict[int, set[int]] = {w: set() for w in node.workers}
        self.nwaiting = 0  # workers that asked and got nothing yet
        self.outstanding = 0  # top-level tasks not settled
        self.all_done = threading.Condition(self.lock)
        self._last_poll = 0.0
        self._rr = 0
        self.sent_seq: dict[int, int] = {}

    # -- the user's side -----------------------------------------------------------------
    def make_task(
        self, fn: Callable[..., Any], payload: Any, kind: TaskKind, pickled: tuple[bytes, bytes] | None = None
    ) -> tuple[Task, DTMFuture]:
        """``pickled``: (fid, bytes) of ``fn`` from an earlier task of the same call (a map)."""
        node = self.node
        t = Task(node.rank, node.next_tid(), kind, 0)
        t.fn = fn
        try:
            t.fid, t.fnblob = pickled if pickled is not None else node.fncache.pickle_fn(fn)
        except Exception as e:
            raise SerializationError(
                f"cannot pickle the function of {t.label()}: {describe(fn)} ({type(e).__name__}: {e})"
            ) from e
        try:
            t.blob, t.bufs = dumps(payload)
        except Exception as e:
            if kind == TaskKind.CALL:
                raise _serial.explain_args_failure(t.label(), payload[0], payload[1], e) from e
            raise SerializationError(f"cannot pickle the items of {t.label()}: {type(e).__name__}: {e}") from e
        fut = DTMFuture()
        t.future = fut
        return t, fut

    def submit(self, task: Task) -> None:
        with self.lock:
            if self.node.broken is not None:
                raise self.node.broken
            self.pending.append(task)
            self.outstanding += 1
            wake = self.nwaiting > 0
        if wake:
            self.node.wakeup()

    def settled(self, task: Task) -> None:
        with self.lock:
            self.outstanding -= 1
            if self.outstanding <= 0:
                self.all_done.notify_all()

    def wait_settled(self, stop: Callable[[], bool]) -> None:
        """Wait until every top-level task has settled, or ``stop()`` (checked twice a second)."""
        with self.lock:
            while self.outstanding > 0 and not stop():
                self.all_done.wait(0.5)

    def cancel_pending(self) -> None:
        """Cancel every queued top-level task (and tell its waiters); keep the retried ones,
        whose futures are running already."""
        with self.lock:
            tasks = list(self.pending)
            self.pending.clear()
        keep = []
        for t in tasks:
            if t.future is not None and t.future.cancel():
                notify_cancelled(t.future)
                self.settled(t)
            else:
                keep.append(t)
        if keep:
            with self.lock:
                self.pending.extendleft(reversed(keep))

    def fail_pending(self, exc: BaseException) -> None:
        with self.lock:
            tasks = list(self.pending)
            self.pending.clear()
            self.outstanding = 0
            self.all_done.notify_all()
        for t in tasks:
            if t.future is not None:
                settle(t.future, False, exc)

    # -- comm-thread side ----------------------------------------------------------------
    def _set(self, w: int, new: HubState) -> None:
        old = self.state[w]
        if old == new:
            return
        waiting = (HUNGRY, IDLE)
        with self.lock:
            self.nwaiting += (new in waiting) - (old in waiting)
        self.state[w] = new

    def on_req(self, src: int, want: int, idle: bool, seen: int) -> None:
        if src not in self.state:
            return  # a worker already given up for lost
        if seen < self.sent_seq.get(src, 0):
            return  # it asked before our last dispatch reached it; it will ask again if need be
        self.want[src] = want
        st = self.state[src]
        if idle:
            self.tried[src].clear()
            self._set(src, IDLE)
        elif st != IDLE:
            self._set(src, HUNGRY)
        self._serve()

    def on_nowork(self, victim: int, thief: int) -> None:
        if self.state.get(thief) != STEALING:
            return
        self.tried[thief].add(victim)
        self._set(thief, IDLE)
        self._serve()

    def on_havework(self, victim: int) -> None:
        if self.state.get(victim) == IDLE:
            return
        for w, st in self.state.items():
            if st == IDLE and w != victim:
                self._steal_for(w, victim)
                return

    def poll_interval(self) -> float | None:
        states = self.state.values()
        if IDLE in states and any(st != IDLE for st in states):
            return 0.02
        return None

    def tick(self) -> None:
        if self.pending and self.nwaiting:
            self._serve()
        now = time.monotonic()
        if now - self._last_poll > 0.02:
            self._last_poll = now
            for w, st in self.state.items():
                if st == IDLE:
                    self.tried[w].clear()
            self._serve()

    def _serve(self) -> None:
        order = [w for w, st in self.state.items() if st == IDLE]
        order += [w for w, st in self.state.items() if st == HUNGRY]
        for w in order:
            sent: list[Task] = []
            while self.pending and not sent:  # cancelled tasks must not use up w's turn
                batch: list[Task] = []
                with self.lock:  # its want, but no more than a fair share of the queue
                    n = min(self.want[w], -(-len(self.pending) // max(1, len(self.state))))
                    while self.pending and len(batch) < n:
                        batch.append(self.pending.popleft())
                for t in batch:
                    if not set_running(t.future):  # cancelled
                        self.settled(t)
                        continue
                    sent.append(t)
            if not sent:
                break  # nothing left to hand out
            self._set(w, NONE)
            self._dispatch(w, sent)
        if self.pending:
            return
        # idle workers and nothing queued here: find them work elsewhere
        for w, st in list(self.state.items()):
            if st == IDLE:
                victims = [v for v in self.node.workers
                           if v != w and v not in self.tried[w] and self.state[v] != IDLE]
                if victims:
                    self._rr += 1
                    self._steal_for(w, victims[self._rr % len(victims)])

    def forget_worker(self, rank: int) -> None:
        if rank not in self.state:
            return
        self._set(rank, NONE)
        self.state.pop(rank, None)
        self.tried.pop(rank, None)
        self.want.pop(rank, None)
        self.sent_seq.pop(rank, None)
        for w, st in self.state.items():
            self.tried[w].discard(rank)
            if st == STEALING:  # its victim may have been the dead one
                self._set(w, IDLE)

    def undelivered(self, w: int) -> None:
        """A dispatch to ``w`` could not be sent (its tasks failed): ``w`` still wants work, and
        its requests, which saw no newer dispatch, are not stale."""
        if w not in self.state:
            return
        self.sent_seq[w] = self.sent_seq.get(w, 1) - 1
        self._set(w, IDLE)
        self._serve()

    def add_worker(self, rank: int) -> None:
        self.state[rank] = NONE
        self.want[rank] = 1
        self.tried[rank] = set()

    def requeue(self, retry: list[Task]) -> None:
        """Top-level tasks lost with a worker go back to the front of the queue."""
        for t in retry:
            t.where = -1
        with self.lock:
            self.pending.extendleft(reversed(retry))
        self._serve()

    def _steal_for(self, thief: int, victim: int) -> None:
        self._set(thief, STEALING)
        self.node.send(victim, (int(Kind.STEAL), thief))

    def _dispatch(self, w: int, tasks: list[Task]) -> None:
        node = self.node
        fc = node.fncache
        descs = []
        bufs: list[Any] = []
        for t in tasks:
            with node.owned_lock:  # where it goes is known before it leaves ("Where every task is")
                t.where = w
                t.hop += 1
                node.owned[t.tid] = t
            descs.append(t.wire_desc(fc.outgoing(w, t.fid, t.fnblob), t.attempt, t.hop))
            bufs.extend(b.raw() if isinstance(b, pickle.PickleBuffer) else b for b in t.bufs)
        self.sent_seq[w] = self.sent_seq.get(w, 0) + 1
        node.send(w, (int(Kind.TASKS), descs, True), bufs)

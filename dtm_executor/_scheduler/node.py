"""One `Node` per process: sends and receives messages, holds the process's `Worker` and/or `Hub`,
keeps the tasks it owns and settles their futures, and handles lost and replacement workers
(the poison-task rule).

Imports every other scheduler module and the leaves `_errors`, `_serial`, `_futures`, `_log`."""

from __future__ import annotations

import collections
import functools
import itertools
import logging
import os
import pickle
import threading
import time
from typing import Any, Callable, Iterable

from .. import _serial
from .._errors import BrokenDTMExecutor, WorkerLostError
from .._futures import settle
from .._log import Every, brief_exc, brief_repr
from .._serial import SerializationError
from .hub import Hub
from .ports import Wire
from .protocol import Kind, TaskKind, read_desc, read_moved, read_result
from .results import failure_entries, unpack_outcome
from .task import Task
from .worker import Worker

log = logging.getLogger("dtm_executor")

#: A rank no MOVED can move a task away from again (it started running there).
_PINNED = 1 << 62

_CHUNK = TaskKind.CHUNK  # a module global: an Enum attribute costs ~0.1 µs on Python 3.11

_perf = time.perf_counter

#: one line per interval for messages the transport refuses (each of their futures gets the error)
_undeliverable_log = Every(10.0)

_Handler = Callable[[int, Any, list[Any]], None]


class Node:
    """Everything one process needs to take part in a run.

    Threads: the communication thread (`comm_loop`) is the only reader of the transport and
    owns the scheduler's state; the sender thread is the only writer, so the reader never
    blocks on a write and two processes can never deadlock writing to each other. Scheduler
    locks are never held while taking a future's lock (futures call into `Worker.wake`)."""

    def __init__(
        self,
        transport: Wire,
        *,
        hub: bool,
        worker: bool,
        workers: list[int],
        max_threads: int = 16,
    ) -> None:
        self.transport = transport
        self.rank = transport.rank
        self.size = transport.size
        self.workers = workers
        self.fncache = _serial.FunctionCache(self.rank)
        #: tasks this rank owns that are away (sent, or running here after a trip), by tid
        self.owned: dict[int, Task] = {}
        self.owned_lock = threading.Lock()
        self._tids = itertools.count(1)
        self._sendq: collections.deque[tuple[int, list[Any]]] = collections.deque()
        self._send_cv = threading.Condition(threading.Lock())
        self._local: collections.deque[list[Any]] = collections.deque()
        self._calls: collections.deque[Callable[[], None]] = collections.deque()
        #: ranks started to replace lost workers and not connected yet (rank 0)
        self.joining: set[int] = set()
        #: every rank started to replace a lost worker (rank 0)
        self.replacements: set[int] = set()
        #: called with a rank that failed to start (rank 0): stop replacing workers
        self.on_start_failed: Callable[[int], None] | None = None
        self.closed = False
        self.stopping = False
        self.broken: BaseException | None = None
        self.on_lost: Callable[[int], None] | None = None
        self.max_retries = 3
        #: rank 0's ``task_granularity`` (None: not set there), for maps inside tasks
        self.task_granularity: float | None = None
        self.dead: set[int] = set()
        self._who: dict[int, str] = {}  # dead rank -> how it was described when it died
        self.describe_rank: Callable[[int], str] = lambda r: f"rank {r}"
        self.on_stop: Callable[[], None] | None = None
        self.worker = Worker(self, max_threads) if worker else None
        self.hub = Hub(self) if hub else None
        self._threads: list[threading.Thread] = []
        self.msgs_sent = 0
        self.bytes_sent = 0
        #: trace events of this rank (None: tracing off); see _report.py for their shapes
        self.trace: list[tuple[Any, ...]] | None = None
        #: rank -> (stats, trace) reported by workers as they stop
        self.reports: dict[int, tuple[dict[str, Any], Any]] = {}
        self.reports_cv = threading.Condition()
        self._handlers: dict[int, _Handler] = {int(k): h for k, h in self._message_handlers().items()}

    def next_tid(self) -> int:
        return next(self._tids)

    # -- sending -------------------------------------------------------------------------
    def send(self, dest: int, msg: tuple[Any, ...], bufs: Iterable[Any] = ()) -> None:
        """Queue a message (``(int(Kind.X), *fields)``, plain values only) for the sender thread."""
        frames = [pickle.dumps(msg, 5)]
        frames.extend(bufs)
        if dest == self.rank:
            self._local.append(frames)
            self.transport.wakeup()
            return
        with self._send_cv:
            self._sendq.append((dest, frames))
            self._send_cv.notify()

    def wake_sender(self) -> None:
        """Outcomes are held for batching: the sender thread sends them when they are due."""
        with self._send_cv:
            self._send_cv.notify()

    def wakeup(self) -> None:
        """Make the communication thread look at its queues (and the hub's) now."""
        self.transport.wakeup()

    def _sender(self) -> None:
        q = self._sendq
        while True:
            late = False
            with self._send_cv:
                while not q and not self.closed:
                    w = self.worker
                    due = w.results_due() if w is not None else None
                    if due is not None:  # results held for batching: 2 ms at most
                        left = due - _perf()
                        if left <= 0:
                            late = True
                            break
                        self._send_cv.wait(left)
                    else:
                        self._send_cv.wait()
                if not q and self.closed:
                    return
                batch = list(q)
                q.clear()
            if late:
                self.worker.flush_results()  # type: ignore[union-attr]
            for dest, frames in batch:
                try:
                    self.transport.send(dest, frames)
                    self.msgs_sent += 1
                    nbytes = sum(memoryview(f).nbytes for f in frames)
                    self.bytes_sent += nbytes
                    if self.trace is not None:
                        self.trace.append(("msg", time.time(), dest, nbytes))
                except OSError as e:  # a lost peer: recv reports it, and its tasks are retried
                    if not self.closed:
                        log.debug("send to rank %d failed: %s", dest, brief_exc(e))
                except Exception as e:  # noqa: BLE001 - this message cannot be sent at all
                    if not self.closed:
                        self._undeliverable(dest, frames, e)

    def _undeliverable(self, dest: int, frames: list[Any], exc: Exception) -> None:
        """A message the transport refused (e.g. over its frame-size limit): fail its tasks
        rather than leave their futures waiting forever."""
        _undeliverable_log(logging.ERROR, "a message to rank %d could not be sent: %s", dest, brief_exc(exc))
        try:
            msg = pickle.loads(frames[0])
        except Exception:  # noqa: BLE001
            return
        err = SerializationError(f"a message to rank {dest} could not be sent: {type(exc).__name__}: {exc}")
        if msg[0] == Kind.TASKS:
            for desc in map(read_desc, msg[1]):
                if desc.owner == self.rank:
                    with self.owned_lock:
                        task = self.owned.pop(desc.tid, None)
                    if task is not None:
                        self.settle_owned(task, False, err, 0.0)
                else:
                    self.send(desc.owner, (int(Kind.RESULTS), failure_entries([desc.tid], err)))
            if self.worker is not None:
                self.worker.wake()
            # the destination never got this work: it must not look served (or stealing)
            if msg[2] and self.hub is not None:
                self.call_soon(functools.partial(self.hub.undelivered, dest))
            elif not msg[2]:
                self.send(0, (int(Kind.NOWORK), dest))
        elif msg[0] == Kind.RESULTS:
            tids = [read_result(e).tid for e in msg[1]]
            self.send(dest, (int(Kind.RESULTS), failure_entries(tids, err)))

    def flush_sends(self, timeout: float = 5.0) -> None:
        end = time.monotonic() + timeout
        while self._sendq and time.monotonic() < end:
            time.sleep(0.001)

    # -- receiving -----------------------------------------------------------------------
    def start(self, comm_in_thread: bool = True) -> None:
        s = threading.Thread(target=self._sender, name=f"dtm-send-{self.rank}", daemon=True)
        s.start()
        self._threads.append(s)
        if comm_in_thread:
            c = threading.Thread(target=self.comm_loop, name=f"dtm-comm-{self.rank}", daemon=True)
            c.start()
            self._threads.append(c)
        if self.worker is not None:
            self.worker.start()

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the communication thread (the one that owns scheduler state)."""
        self._calls.append(fn)
        self.transport.wakeup()

    def comm_loop(self) -> None:
        tr = self.transport
        hub = self.hub
        try:
            while not self.closed:
                while self._calls:
                    self._calls.popleft()()
                while self._local:
                    self._dispatch(self.rank, self._local.popleft())
                timeout = hub.poll_interval() if hub is not None else None
                item = tr.recv(timeout)
                if item is not None:
                    src, frames = item
                    if frames is None:
                        self._peer_lost(src)
                    else:
                        self._dispatch(src, frames)
                if hub is not None:
                    hub.tick()
        except Exception as e:  # pragma: no cover - a bug or a dead transport
            if not self.closed:
                log.exception("communication thread of rank %d failed", self.rank)
                self.fail_all(e)
        finally:
            if self.on_stop is not None and not self.closed:
                self.on_stop()

    def _peer_lost(self, src: int) -> None:
        if self.closed:
            return
        if self.on_lost is not None:
            self.on_lost(src)

    def _dispatch(self, src: int, frames: list[Any]) -> None:
        msg = pickle.loads(frames[0])
        kind = msg[0]
        try:
            handler = self._handlers.get(kind)
        except TypeError:  # pragma: no cover - not even an int
            handler = None
        if handler is None:  # pragma: no cover
            log.error("unknown message kind %s from rank %d", brief_repr(kind), src)
            return
        handler(src, msg, frames)

    def _message_handlers(self) -> dict[Kind, _Handler]:
        """What each message does here, on the communication thread: ``handler(src, msg, frames)``."""
        return {
            Kind.TASKS: self._got_tasks, Kind.RESULTS: self._got_results, Kind.REQ: self._got_req,
            Kind.STEAL: self._got_steal, Kind.NOWORK: self._got_nowork, Kind.HAVEWORK: self._got_havework,
            Kind.SHUTDOWN: self._got_shutdown, Kind.STOPPED: self._got_stopped, Kind.LOST: self._got_lost,
            Kind.MOVED: self._got_moved, Kind.START: self._got_start, Kind.ACK: self._got_ack,
            Kind.JOIN: self._got_join, Kind.INITFAIL: self._got_initfail,
            Kind.OPTIONS: self._got_options,
        }

    def _got_tasks(self, src: int, msg: Any, frames: list[Any]) -> None:
        assert self.worker is not None
        self.worker.on_tasks(src, msg[1], frames, msg[2])

    def _got_results(self, src: int, msg: Any, frames: list[Any]) -> None:
        self.on_results(src, msg[1], frames)

    def _got_req(self, src: int, msg: Any, frames: list[Any]) -> None:
        assert self.hub is not None
        self.hub.on_req(src, msg[1], msg[2], msg[3])

    def _got_steal(self, src: int, msg: Any, frames: list[Any]) -> None:
        if self.worker is not None:
            self.worker.on_steal(msg[1])

    def _got_nowork(self, src: int, msg: Any, frames: list[Any]) -> None:
        if self.hub is not None:
            self.hub.on_nowork(src, msg[1])

    def _got_havework(self, src: int, msg: Any, frames: list[Any]) -> None:
        if self.hub is not None:
            self.hub.on_havework(src)

    def _got_shutdown(self, src: int, msg: Any, frames: list[Any]) -> None:
        if self.worker is not None and src != self.rank:
            self.send(src, (int(Kind.STOPPED), self.stats_report(), self.trace))
        self.closed = True
        if self.on_stop is not None:
            self.on_stop()

    def _got_stopped(self, src: int, msg: Any, frames: list[Any]) -> None:
        with self.reports_cv:
            self.reports[src] = (msg[1], msg[2])
            self.reports_cv.notify_all()

    def _got_lost(self, src: int, msg: Any, frames: list[Any]) -> None:
        self.worker_lost(msg[1], msg[2])

    def _got_moved(self, src: int, msg: Any, frames: list[Any]) -> None:
        self.on_moved(src, msg[1])

    def _got_start(self, src: int, msg: Any, frames: list[Any]) -> None:
        self.on_start(src, msg[1], msg[2])

    def _got_ack(self, src: int, msg: Any, frames: list[Any]) -> None:
        if self.worker is not None:
            self.worker.on_ack(src, msg[1])

    def _got_options(self, src: int, msg: Any, frames: list[Any]) -> None:
        self.task_granularity = msg[1].get("task_granularity", self.task_granularity)

    def _got_join(self, src: int, msg: Any, frames: list[Any]) -> None:
        if msg[1] not in self.workers and msg[1] not in self.dead:
            self.workers.append(msg[1])

    def _got_initfail(self, src: int, msg: Any, frames: list[Any]) -> None:
        self.on_initfail(src, msg[1])

    # -- reports -------------------------------------------------------------------------
    def stats_report(self) -> dict[str, Any]:
        w = self.worker
        rep: dict[str, Any] = {"rank": self.rank, "pid": os.getpid(), "host": _hostname(),
                               "msgs_sent": self.msgs_sent, "bytes_sent": self.bytes_sent}
        if w is not None:
            rep.update(w.stats())
        return rep

    def collect_reports(self, ranks: list[int], timeout: float) -> dict[int, tuple[dict[str, Any], Any]]:
        """Wait (bounded) for the STOPPED reports of ``ranks``."""
        end = time.monotonic() + timeout
        with self.reports_cv:
            while any(r not in self.reports and r not in self.dead for r in ranks):
                left = end - time.monotonic()
                if left <= 0:
                    break
                self.reports_cv.wait(left)
            return dict(self.reports)

    # -- losing a worker -----------------------------------------------------------------
    def worker_lost(self, rank: int, who: str) -> None:
        """Re-run (or fail) every task this rank owns that is on ``rank``, as far as it knows.

        Runs on the communication thread of every surviving rank (rank 0 detects the loss and
        tells the others), so it is ordered with the steals, dispatches and MOVED notices that
        say where tasks are. A task whose MOVED to ``rank`` arrives later is lost then
        (`on_moved`).
        """
        if rank in self.dead or rank == self.rank:
            return
        self.dead.add(rank)
        self._who[rank] = who
        if rank in self.workers:
            self.workers.remove(rank)
        self.joining.discard(rank)
        self.fncache.forget_peer(rank)
        if self.hub is not None:
            self.hub.forget_worker(rank)
        if self.worker is not None:
            self.worker.forget(rank)
        with self.owned_lock:
            lost = [t for t in self.owned.values() if t.where == rank]
            for t in lost:
                del self.owned[t.tid]
        self._requeue(lost, rank, who)
        if self.hub is not None:
            for w in self.workers:
                if w != self.rank:
                    self.send(w, (int(Kind.LOST), rank, who))
            if not self.workers and not self.joining:
                self.fail_all(BrokenDTMExecutor(f"all workers are gone (the last was {who})"))

    def _requeue(self, lost: list[Task], rank: int, who: str) -> None:
        """Queue again (or fail) owned tasks that were on ``rank`` when it died.

        The poison-task rule: a loss counts against a task if the task confirmed it was running
        there (`START`), or if it had never been on a lost worker before (then nobody knows
        whether it was running). A task counted more than ``max_retries`` times fails with
        `WorkerLostError`; one that was only queued on the dead worker goes back unharmed.
        """
        retry: list[Task] = []
        for t in lost:
            if t.ran_on == rank or not t.suspect:
                t.retries += 1
            t.suspect = True
            t.attempt += 1
            t.ran_on = -1
            t.where = -1
            if t.retries > self.max_retries:
                self.finish(t, False, WorkerLostError(
                    f"{t.label()} was running on {who}, which died; given up after {t.retries} "
                    f"lost worker(s) (max_retries={self.max_retries})"), 0.0)
                if self.hub is not None and t.depth == 0:
                    self.hub.settled(t)
            else:
                log.debug("%s was on %s, which died: queued again (lost %d time(s))",
                          t.label(), who, t.retries)
                retry.append(t)
        if not retry:
            return
        mine = [t for t in retry if t.depth > 0 or self.hub is None]
        if mine:
            assert self.worker is not None
            self.worker.requeue(mine)
        if self.hub is not None:
            self.hub.requeue([t for t in retry if t.depth == 0 and t not in mine])

    def on_moved(self, src: int, entries: list[tuple[Any, ...]]) -> None:
        """``src`` handed tasks we own on to another rank: remember the newest location."""
        gone: dict[int, list[Task]] = {}
        with self.owned_lock:
            for e in map(read_moved, entries):
                t = self.owned.get(e.tid)
                if t is None or t.attempt != e.attempt or e.hop <= t.hop:
                    continue  # settled, re-queued since, or older news
                t.hop = e.hop
                t.where = e.dest
                if e.dest in self.dead:  # it went to a rank that died before we heard of the move
                    del self.owned[e.tid]
                    gone.setdefault(e.dest, []).append(t)
        for dest, tasks in gone.items():
            self._requeue(tasks, dest, self._who.get(dest, f"rank {dest}"))

    def on_start(self, src: int, tid: int, attempt: int) -> None:
        """A task that has outlived a worker is starting on ``src``: note it, then let it run."""
        with self.owned_lock:
            t = self.owned.get(tid)
            if t is not None and t.attempt == attempt:
                t.ran_on = src
                t.where = src
                t.hop = _PINNED  # running tasks never move: ignore older MOVED notices
        self.send(src, (int(Kind.ACK), tid))

    # -- replacement workers -------------------------------------------------------------
    def on_initfail(self, src: int, text: str) -> None:
        """A worker could not start: at start-up the executor is broken; a replacement is
        reported and the run goes on with the workers it has (none are replaced after that)."""
        if src not in self.replacements:
            self.fail_all(BrokenDTMExecutor(f"worker rank {src} could not start:\n{text}"))
            return
        log.error("replacement worker rank %d could not start; no more workers will be "
                  "replaced:\n%s", src, text)
        if self.on_start_failed is not None:
            self.on_start_failed(src)
        self.joining.discard(src)
        self.dead.add(src)
        self._who[src] = f"replacement worker rank {src}"
        if src in self.workers:
            self.workers.remove(src)
        if self.hub is not None:
            self.hub.forget_worker(src)
        if not self.workers and not self.joining:
            self.fail_all(BrokenDTMExecutor(
                f"all workers are gone and a replacement (rank {src}) could not start:\n{text}"))

    def add_worker(self, rank: int) -> None:
        """A replacement worker is connected (communication thread of rank 0)."""
        self.joining.discard(rank)
        if self.closed or rank in self.dead or rank in self.workers:
            return
        for w in self.workers:
            if w != self.rank:
                self.send(w, (int(Kind.JOIN), rank))
        self.workers.append(rank)
        if self.hub is not None:
            self.hub.add_worker(rank)

    # -- results -------------------------------------------------------------------------
    def on_results(self, src: int, entries: list[tuple[Any, ...]], frames: list[Any]) -> None:
        pos = 1
        # a ResultEntry, field by field (by position, as in `Worker.on_tasks`)
        for tid, code, data, nbufs, dur in entries:
            bufs = frames[pos : pos + nbufs]
            pos += nbufs
            with self.owned_lock:
                task = self.owned.pop(tid, None)
            if task is None:
                continue  # already settled (a retried task answered twice)
            if self.hub is not None and task.depth == 0:
                self.hub.settled(task)
            ok, value = unpack_outcome(task, code, data, bufs, self.rank)
            self.finish(task, ok, value, dur)
        if self.worker is not None:
            self.worker.wake()

    def settle_owned(self, task: Task, ok: bool, value: Any, dur: float) -> None:
        """Settle a task this rank owns (and, if top-level, count it done at the hub)."""
        if self.hub is not None and task.depth == 0:
            self.hub.settled(task)
        self.finish(task, ok, value, dur)

    def finish(self, task: Task, ok: bool, value: Any, dur: float) -> None:
        """Settle the future of a task owned by this rank.

        A task's exception goes to whoever holds its future (as with the standard library, which
        logs nothing then): here it is only a DEBUG line, one per task, message cut short."""
        fut = task.future
        if fut is None:
            return
        fut._dtm_dur = dur
        fut._dtm_task = None  # break the future <-> task cycle: let refcounting free both
        if ok:
            if task.kind == _CHUNK and value[1]:
                first = getattr(fut, "_dtm_first", None)  # the chunk's place in the map's input
                if first is not None:  # (not known yet: the map logs it, see _map)
                    fut._dtm_logged = True  # type: ignore[attr-defined]
                    if log.isEnabledFor(logging.DEBUG):
                        i, e = value[1][0]
                        log.debug("%s item %d raised %s (%d item(s) of this chunk failed)",
                                  task.label(), first + i, brief_exc(e), len(value[1]))
            settle(fut, True, value)
        else:
            log.debug("%s raised %s", task.label(), brief_exc(value))
            settle(fut, False, value)

    # -- the end ---------------------------------------------------------------------------
    def wait_settled(self) -> None:
        """Wait until every top-level task has settled, or the run broke or stopped (rank 0)."""
        assert self.hub is not None
        self.hub.wait_settled(lambda: self.broken is not None or self.closed)

    def fail_all(self, exc: BaseException) -> None:
        """The run is broken: every future this rank owns (and the hub's queue) gets ``exc``."""
        if self.broken is None:
            self.broken = exc
        with self.owned_lock:
            tasks = list(self.owned.values())
            self.owned.clear()
        for t in tasks:
            if t.future is not None:
                settle(t.future, False, exc)
        if self.hub is not None:
            self.hub.fail_pending(exc)
        if self.worker is not None:
            self.worker.wake()

    def close(self) -> None:
        self.closed = True
        with self._send_cv:
            self._send_cv.notify_all()
        if self.worker is not None:
            self.worker.close()
        try:
            self.transport.wakeup()
        except Exception:  # noqa: BLE001
            pass


def _hostname() -> str:
    import socket

    return socket.gethostname()

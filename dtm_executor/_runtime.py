"""The scheduler: one `Node` per process, with a `Worker` (executes tasks) and/or a `Hub` (rank 0).

Messages between ranks are pickled tuples in frame 0 followed by out-of-band buffers.
See docs/design.md for the whole picture; the rules that matter for correctness:

* Only the *token* holder among a worker's threads runs task code, so a worker uses one core.
* A waiting task runs its still-queued children inline; otherwise it hands the token to another
  thread (a new one while under ``max_threads``), or, at the cap, runs other queued work inline.
* The communication thread never blocks on a send (a sender thread does the writes), so two
  processes can never block writing to each other.
* Scheduler locks are never held while taking a future's lock (futures call into `Worker.wake`).

The scheduler layer: imports the leaves only (a transport is whatever has ``rank``, ``size``,
``send``, ``recv`` and ``wakeup``).
"""

from __future__ import annotations

import collections
import functools
import itertools
import logging
import math
import os
import pickle
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable, Iterable

from . import _serial
from ._errors import BrokenDTMExecutor, WorkerLostError
from ._futures import DTMFuture, tls
from ._log import Every, brief_exc, brief_repr
from ._serial import SerializationError, describe, dumps, fn_name, loads

log = logging.getLogger("dtm_executor")

# message kinds
TASKS, RESULTS, REQ, STEAL, NOWORK, HAVEWORK, SHUTDOWN, INITFAIL, STOPPED, LOST = range(1, 11)
#: MOVED(entries): tasks this rank handed on to another rank (tells their owner where they are);
#: START(tid, attempt) / ACK(tid): a task that has already outlived a worker is about to run here;
#: JOIN(rank): a replacement worker joined the run.
MOVED, START, ACK, JOIN = range(11, 15)

#: A rank no MOVED can move a task away from again (it started running there).
_PINNED = 1 << 62

#: the longest a finished task's result waits to be batched with others (seconds)
RESULT_DELAY = 0.002

#: distinct task function names in a worker's statistics (the rest: "(other functions)")
_MAX_FN_NAMES = 1000

# task states
QUEUED, CLAIMED, GONE = 0, 1, 2

# task kinds
CALL, CHUNK = 0, 1

_perf = time.perf_counter

#: one line per interval for messages the transport refuses (each of their futures gets the error)
_undeliverable_log = Every(10.0)


class _Task:
    __slots__ = (
        "owner", "tid", "kind", "fn", "args", "kwargs", "fid", "fnblob", "blob", "bufs",
        "future", "depth", "state", "home", "where", "retries", "parent", "attempt", "hop", "ran_on",
        "suspect",
    )

    def __init__(self, owner: int, tid: int, kind: int, depth: int) -> None:
        self.owner = owner
        self.tid = tid
        self.kind = kind
        self.depth = depth
        self.fn: Any = None
        self.args: Any = None
        self.kwargs: Any = None
        self.fid: Any = None
        self.fnblob = b""  # the pickled function, once known
        self.blob: Any = None
        self.bufs: Any = ()
        self.future: DTMFuture | None = None
        self.state = QUEUED
        self.home: Worker | None = None
        self.where = -1  # rank the task was sent to, for owned tasks
        self.retries = 0  # workers that died while (possibly) running it: the poison-task count
        self.parent: tuple[int, int] | None = None  # (owner, tid) of the submitting task
        # Where the task is, as its owner knows it (see "Where every task is" in docs/design.md):
        # ``attempt`` grows each time the owner re-queues it after a loss, so that news about an
        # older attempt is ignored; ``hop`` counts hand-overs within an attempt, so that the
        # owner keeps the newest of MOVED notices that may arrive out of order.
        self.attempt = 0
        self.hop = 0
        self.ran_on = -1  # rank that confirmed (START) it is running this attempt
        self.suspect = False  # it was on a worker that died: runs only after telling its owner

    def fn_label(self) -> str:
        """The function's name; read from its pickle when it is not (or cannot be) unpickled."""
        if self.fn is not None:
            return fn_name(self.fn)
        return _serial.pickled_name(self.fnblob) or "?"

    def label(self) -> str:
        return f"task #{self.tid} ({self.fn_label()})"


def run_chunk(
    fn: Callable[..., Any], items: list[Any], star: bool, kwargs: dict[str, Any]
) -> tuple[list[Any], list[tuple[int, BaseException]] | None]:
    """Apply ``fn`` to every item; per-item exceptions are kept so ``map`` raises at that item."""
    errs: list[tuple[int, BaseException]] | None = None
    if star:
        values = []
        for i, a in enumerate(items):
            try:
                values.append(fn(*a, **kwargs))
            except BaseException as e:  # noqa: BLE001 - reported to the caller
                values.append(None)
                (errs := errs if errs is not None else []).append((i, e))
        return values, errs
    try:
        if kwargs:
            return [fn(a, **kwargs) for a in items], None
        return [fn(a) for a in items], None
    except BaseException:  # noqa: BLE001 - redo item by item to locate failures
        pass
    values = []
    errs = []
    for i, a in enumerate(items):
        try:
            values.append(fn(a, **kwargs))
        except BaseException as e:  # noqa: BLE001
            values.append(None)
            errs.append((i, e))
    return values, errs


class Node:
    """Everything one process needs to take part in a run."""

    def __init__(
        self,
        transport: Any,  # a `dtm_executor.Transport` (a layer above: not imported)
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
        self.owned: dict[int, _Task] = {}
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

    def next_tid(self) -> int:
        return next(self._tids)

    # -- sending -------------------------------------------------------------------------
    def send(self, dest: int, msg: tuple[Any, ...], bufs: Iterable[Any] = ()) -> None:
        frames = [pickle.dumps(msg, 5)]
        frames.extend(bufs)
        if dest == self.rank:
            self._local.append(frames)
            self.transport.wakeup()
            return
        with self._send_cv:
            self._sendq.append((dest, frames))
            self._send_cv.notify()

    def _sender(self) -> None:
        q = self._sendq
        while True:
            late = False
            with self._send_cv:
                while not q and not self.closed:
                    w = self.worker
                    if w is not None and w._out_n:  # results held for batching: 2 ms at most
                        left = w._out_since + RESULT_DELAY - _perf()
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
        if msg[0] == TASKS:
            for desc in msg[1]:
                owner, tid = desc[0], desc[1]
                if owner == self.rank:
                    with self.owned_lock:
                        task = self.owned.pop(tid, None)
                    if task is not None:
                        if self.hub is not None and task.depth == 0:
                            self.hub.settled(task)
                        self.finish(task, False, err, 0.0)
                else:
                    data, _ = _serial.pack_exception(err, "")
                    self.send(owner, (RESULTS, [(tid, 0, data, 0, 0.0)]))
            if self.worker is not None:
                self.worker.wake()
            # the destination never got this work: it must not look served (or stealing)
            if msg[2] and self.hub is not None:
                self.call_soon(functools.partial(self.hub.undelivered, dest))
            elif not msg[2]:
                self.send(0, (NOWORK, dest))
        elif msg[0] == RESULTS:
            data, _ = _serial.pack_exception(err, "")
            self.send(dest, (RESULTS, [(e[0], 0, data, 0, 0.0) for e in msg[1]]))

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
                self._fail_all(e)
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
        if kind == TASKS:
            assert self.worker is not None
            self.worker.on_tasks(src, msg[1], frames, msg[2])
        elif kind == RESULTS:
            self.on_results(src, msg[1], frames)
        elif kind == REQ:
            assert self.hub is not None
            self.hub.on_req(src, msg[1], msg[2], msg[3])
        elif kind == STEAL:
            if self.worker is not None:
                self.worker.on_steal(msg[1])
        elif kind == NOWORK:
            if self.hub is not None:
                self.hub.on_nowork(src, msg[1])
        elif kind == HAVEWORK:
            if self.hub is not None:
                self.hub.on_havework(src)
        elif kind == SHUTDOWN:
            if self.worker is not None and src != self.rank:
                self.send(src, (STOPPED, self.stats_report(), self.trace))
            self.closed = True
            if self.on_stop is not None:
                self.on_stop()
        elif kind == STOPPED:
            with self.reports_cv:
                self.reports[src] = (msg[1], msg[2])
                self.reports_cv.notify_all()
        elif kind == LOST:
            self.worker_lost(msg[1], msg[2])
        elif kind == MOVED:
            self.on_moved(src, msg[1])
        elif kind == START:
            self.on_start(src, msg[1], msg[2])
        elif kind == ACK:
            if self.worker is not None:
                self.worker.on_ack(src, msg[1])
        elif kind == JOIN:
            if msg[1] not in self.workers and msg[1] not in self.dead:
                self.workers.append(msg[1])
        elif kind == INITFAIL:
            self.on_initfail(src, msg[1])
        else:  # pragma: no cover
            log.error("unknown message kind %s from rank %d", brief_repr(kind), src)

    def stats_report(self) -> dict[str, Any]:
        w = self.worker
        rep: dict[str, Any] = {"rank": self.rank, "pid": os.getpid(), "host": _hostname(),
                               "msgs_sent": self.msgs_sent, "bytes_sent": self.bytes_sent}
        if w is not None:
            rep.update(tasks_run=w.tasks_run, busy=w.busy_time, stolen=w.tasks_stolen,
                       started=w.started, peak_threads=w.peak_threads,
                       functions=_by_name(w.fn_stats.values()))
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
                    self.send(w, (LOST, rank, who))
            if not self.workers and not self.joining:
                self._fail_all(BrokenDTMExecutor(f"all workers are gone (the last was {who})"))

    def _requeue(self, lost: list[_Task], rank: int, who: str) -> None:
        """Queue again (or fail) owned tasks that were on ``rank`` when it died.

        The poison-task rule: a loss counts against a task if the task confirmed it was running
        there (`START`), or if it had never been on a lost worker before (then nobody knows
        whether it was running). A task counted more than ``max_retries`` times fails with
        `WorkerLostError`; one that was only queued on the dead worker goes back unharmed.
        """
        retry: list[_Task] = []
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

    def on_moved(self, src: int, entries: list[tuple[int, int, int, int]]) -> None:
        """``src`` handed tasks we own on to another rank: remember the newest location."""
        gone: dict[int, list[_Task]] = {}
        with self.owned_lock:
            for tid, dest, attempt, hop in entries:
                t = self.owned.get(tid)
                if t is None or t.attempt != attempt or hop <= t.hop:
                    continue  # settled, re-queued since, or older news
                t.hop = hop
                t.where = dest
                if dest in self.dead:  # it went to a rank that died before we heard of the move
                    del self.owned[tid]
                    gone.setdefault(dest, []).append(t)
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
        self.send(src, (ACK, tid))

    def on_initfail(self, src: int, text: str) -> None:
        """A worker could not start: at start-up the executor is broken; a replacement is
        reported and the run goes on with the workers it has (none are replaced after that)."""
        if src not in self.replacements:
            self._fail_all(BrokenDTMExecutor(f"worker rank {src} could not start:\n{text}"))
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
            self._fail_all(BrokenDTMExecutor(
                f"all workers are gone and a replacement (rank {src}) could not start:\n{text}"))

    def add_worker(self, rank: int) -> None:
        """A replacement worker is connected (communication thread of rank 0)."""
        self.joining.discard(rank)
        if self.closed or rank in self.dead or rank in self.workers:
            return
        for w in self.workers:
            if w != self.rank:
                self.send(w, (JOIN, rank))
        self.workers.append(rank)
        if self.hub is not None:
            self.hub.add_worker(rank)

    # -- results -------------------------------------------------------------------------
    def on_results(self, src: int, entries: list[tuple[Any, ...]], frames: list[Any]) -> None:
        pos = 1
        for tid, code, data, nb, dur in entries:
            bufs = frames[pos : pos + nb]
            pos += nb
            with self.owned_lock:
                task = self.owned.pop(tid, None)
            if task is None:
                continue  # already settled (a retried task answered twice)
            if self.hub is not None and task.depth == 0:
                self.hub.settled(task)
            try:
                if code == 1:
                    value = loads(data, bufs)
                    if task.kind == CHUNK and value[1]:
                        value = (value[0], [(i, _serial.unpack_exception(b, ())) for i, b in value[1]])
                    ok = True
                else:
                    value = _serial.unpack_exception(data, bufs)
                    ok = False
            except Exception as e:  # noqa: BLE001
                value = SerializationError(
                    f"the result of {task.label()} could not be unpickled on rank {self.rank}: "
                    f"{type(e).__name__}: {e}"
                )
                ok = False
            self.finish(task, ok, value, dur)
        if self.worker is not None:
            self.worker.wake()

    def finish(self, task: _Task, ok: bool, value: Any, dur: float) -> None:
        """Settle the future of a task owned by this rank.

        A task's exception goes to whoever holds its future (as with the standard library, which
        logs nothing then): here it is only a DEBUG line, one per task, message cut short."""
        fut = task.future
        if fut is None:
            return
        fut._dtm_dur = dur
        fut._dtm_task = None  # break the future <-> task cycle: let refcounting free both
        if ok:
            if task.kind == CHUNK and value[1]:
                first = getattr(fut, "_dtm_first", None)  # the chunk's place in the map's input
                if first is not None:  # (not known yet: the map logs it, see _map)
                    fut._dtm_logged = True  # type: ignore[attr-defined]
                    if log.isEnabledFor(logging.DEBUG):
                        i, e = value[1][0]
                        log.debug("%s item %d raised %s (%d item(s) of this chunk failed)",
                                  task.label(), first + i, brief_exc(e), len(value[1]))
            _settle(fut, True, value)
        else:
            log.debug("%s raised %s", task.label(), brief_exc(value))
            _settle(fut, False, value)

    def _fail_all(self, exc: BaseException) -> None:
        if self.broken is None:
            self.broken = exc
        with self.owned_lock:
            tasks = list(self.owned.values())
            self.owned.clear()
        for t in tasks:
            if t.future is not None:
                _settle(t.future, False, exc)
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

    def flush_sends(self, timeout: float = 5.0) -> None:
        end = time.monotonic() + timeout
        while self._sendq and time.monotonic() < end:
            time.sleep(0.001)


def _by_name(rows: Iterable[list[Any]]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for name, count, total, items in rows:
        acc = out.setdefault(name, [0, 0.0, 0])
        acc[0] += count
        acc[1] += total
        acc[2] += items
    return out


def _hostname() -> str:
    import socket

    return socket.gethostname()


def _settle(fut: Future[Any], ok: bool, value: Any) -> None:
    try:
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)
    except Exception:  # noqa: BLE001 - already settled or cancelled
        _notify_cancelled(fut)  # a task dropped while its future was cancelled: tell its waiters


def _notify_cancelled(fut: Future[Any]) -> None:
    """Tell ``wait()``/``as_completed()`` about a cancelled future that will never run.

    ``Future.cancel()`` wakes ``result()`` and runs callbacks, but ``wait``/``as_completed`` count
    only ``CANCELLED_AND_NOTIFIED``, which ``set_running_or_notify_cancel()`` sets (once)."""
    if fut._state == "CANCELLED":  # type: ignore[attr-defined]
        try:
            fut.set_running_or_notify_cancel()
        except RuntimeError:  # notified meanwhile by another thread
            pass


def _start(fut: Future[Any] | None) -> bool:
    """A queued task is about to run or leave: mark its future running. False if it was
    cancelled (its waiters are told now, if nobody told them yet): then drop the task."""
    if fut is None:
        return True
    st = fut._state  # type: ignore[attr-defined]
    if st == "CANCELLED_AND_NOTIFIED":
        return False
    if st in ("PENDING", "CANCELLED"):
        try:
            return fut.set_running_or_notify_cancel()
        except RuntimeError:  # cancelled and notified meanwhile
            return False
    return True  # RUNNING already: a task run again after its worker died


def cancel_future(fut: Future[Any]) -> bool:
    """Cancel a future on the library's own initiative (shutdown, a map given up by its consumer):
    unlike a bare ``Future.cancel()``, everyone waiting on it (``wait``, ``as_completed``) learns
    at once, and a nested child still queued on this worker leaves the queue. False if it has
    started (or finished) already."""
    task = getattr(fut, "_dtm_task", None)
    home = task.home if task is not None else None
    if home is not None and not home.withdraw(task):
        # a local child some thread has claimed, to run or to send: that thread tells the waiters
        return fut.cancel()
    if not fut.cancel():  # at the hub, a cancelled task is dropped when its turn comes
        return False
    _notify_cancelled(fut)
    if home is not None:
        home.nudge()  # a waiter of this worker may be asleep on it
    return True


class _ThreadRec:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


class Worker:
    """Executes tasks: a deque of local children, an inbox of received tasks, a token, threads."""

    def __init__(self, node: Node, max_threads: int) -> None:
        self.node = node
        self.rank = node.rank
        self.cv = threading.Condition(threading.Lock())
        self.ready: collections.deque[_Task] = collections.deque()
        self.inbox: collections.deque[_Task] = collections.deque()
        self.nqueued = 0
        self.ninbox = 0
        self.token: _ThreadRec | None = None
        self.resumable: collections.deque[_ThreadRec] = collections.deque()
        self.nthreads = 0
        self.idle = 0
        self.sleepers = 0
        self.max_threads = max(2, max_threads)
        self.peak_threads = 0
        self.peak_blocked = 0
        self.blocked = 0
        self.closing = False
        self.req_outstanding = False
        self.idle_reported = False
        self.hint = False
        self.dur: float | None = None
        self.want = 1
        self.hub_seq = 0  # dispatches received from the hub (echoed in REQ to spot stale ones)
        self.ntomb = 0  # claimed tasks still sitting in ``ready``
        self._out: dict[int, tuple[list[Any], list[Any]]] = {}
        self._out_lock = threading.Lock()
        self._out_n = 0
        self._out_since = 0.0
        self.tasks_run = 0
        self.tasks_stolen = 0
        self.busy_time = 0.0  # time some thread held the token
        self._tok_t = 0.0
        self.started = time.time()
        #: function name -> [name, count, total seconds, items] (at most _MAX_FN_NAMES names)
        self.fn_stats: dict[str, list[Any]] = {}
        self._fn_rows: dict[Any, list[Any]] = {}  # recent function keys -> their row
        #: (owner, tid) -> set when the owner acknowledged START for a suspect task
        self._acks: dict[tuple[int, int], threading.Event] = {}

    # -- threads -------------------------------------------------------------------------
    def start(self) -> None:
        with self.cv:
            self._spawn_locked()
            self._report_idle_locked()

    def _spawn_locked(self) -> None:
        self.nthreads += 1
        self.peak_threads = max(self.peak_threads, self.nthreads)
        th = threading.Thread(
            target=self._thread_main, name=f"dtm-exec-{self.rank}-{self.nthreads}", daemon=True
        )
        th.start()

    def _maybe_spawn_locked(self) -> None:
        if (
            self.token is None
            and not self.resumable
            and self.nqueued > 0
            and self.idle == 0
            and self.nthreads < self.max_threads
        ):
            self._spawn_locked()

    def wake(self) -> None:
        if self.sleepers:
            with self.cv:
                self.cv.notify_all()

    def close(self) -> None:
        with self.cv:
            self.closing = True
            self.cv.notify_all()

    def _thread_main(self) -> None:
        me = _ThreadRec(threading.current_thread().name)
        tls.worker = self
        tls.thread = me
        tls.tasks = []
        cv = self.cv
        cv.acquire()
        try:
            while not self.closing:
                if self.token is None and not self.resumable:
                    task = self._pop_locked()
                    if task is not None:
                        self.token = me
                        self._tok_t = _perf()
                        cv.release()
                        try:
                            self._execute(task)
                        finally:
                            cv.acquire()
                        self.token = None
                        self.busy_time += _perf() - self._tok_t
                        if self.resumable:
                            cv.notify_all()
                        continue
                    self._report_idle_locked()
                if self.idle >= 1 and self.nthreads > 1:
                    break  # one idle spare is enough
                self.idle += 1
                self.sleepers += 1
                cv.wait()
                self.sleepers -= 1
                self.idle -= 1
        finally:
            self.nthreads -= 1
            cv.release()

    # -- queues --------------------------------------------------------------------------
    def _pop_locked(self) -> _Task | None:
        ready = self.ready
        while ready:
            t = ready.pop()
            if t.state == QUEUED:
                t.state = CLAIMED
                self.nqueued -= 1
                return t
            if t.state == CLAIMED and self.ntomb:
                self.ntomb -= 1
        inbox = self.inbox
        while inbox:
            t = inbox.popleft()
            if t.state == QUEUED:
                t.state = CLAIMED
                self.nqueued -= 1
                self.ninbox -= 1
                self._maybe_request_locked()
                return t
        return None

    def _maybe_request_locked(self) -> None:
        if not self.req_outstanding and self.ninbox <= self.want // 2:
            self.req_outstanding = True
            self.node.send(0, (REQ, max(1, self.want - self.ninbox), False, self.hub_seq))

    def _report_idle_locked(self) -> None:
        """Nothing runnable here: ask the hub for work (once per idle period)."""
        if self.nqueued == 0 and not self.resumable and not self.idle_reported and not self.closing:
            self.idle_reported = True
            self.req_outstanding = True
            self.flush_results()
            self.node.send(0, (REQ, self.want, True, self.hub_seq))

    def push_local(self, task: _Task) -> None:
        task.home = self
        with self.cv:
            self.ready.append(task)
            self.nqueued += 1
            if self.token is None:
                self._maybe_spawn_locked()
                self.cv.notify_all()
            hint = self.hint
            self.hint = False
        if hint:
            self.node.send(0, (HAVEWORK,))

    def on_tasks(self, src: int, descs: list[tuple[Any, ...]], frames: list[Any], from_hub: bool) -> None:
        fc = self.node.fncache
        pos = 1
        tasks = []
        dead = self.node.dead
        for owner, tid, fid, fnblob, blob, nb, depth, kind, parent, attempt, hop in descs:
            if owner in dead:  # overtaken by the news of its owner's death: nobody wants it
                pos += nb
                fc.incoming(src, fid, fnblob)
                continue
            t = _Task(owner, tid, kind, depth)
            t.parent = parent
            t.attempt = attempt
            t.hop = hop
            t.suspect = attempt > 0
            t.fid = fid
            t.fnblob = fc.incoming(src, fid, fnblob)
            t.blob = blob
            t.bufs = frames[pos : pos + nb]
            pos += nb
            t.home = self
            tasks.append(t)
        with self.cv:
            if from_hub:
                self.hub_seq += 1
            self.inbox.extend(tasks)
            self.nqueued += len(tasks)
            self.ninbox += len(tasks)
            self.req_outstanding = False
            self.idle_reported = False
            if src != 0:
                self.tasks_stolen += len(tasks)
            self._maybe_spawn_locked()
            self.cv.notify_all()
            if self.ninbox <= self.want // 2:
                self._maybe_request_locked()

    def on_steal(self, thief: int) -> None:
        grab: list[_Task] = []
        if thief in self.node.dead:
            return
        with self.cv:
            if self.ninbox > 0:
                n = max(1, self.ninbox // 2)
                while self.inbox and len(grab) < n:
                    t = self.inbox.pop()
                    if t.state == QUEUED:
                        grab.append(t)
                grab.reverse()
                self.ninbox -= len(grab)
            elif self.nqueued > 0:
                n = max(1, (self.nqueued - self.ninbox) // 2)
                depth = None
                while self.ready and len(grab) < n:
                    t = self.ready[0]
                    if t.state != QUEUED:
                        self.ready.popleft()
                        continue
                    if depth is not None and t.depth != depth:
                        break
                    depth = t.depth
                    grab.append(self.ready.popleft())
            for t in grab:
                t.state = GONE
            self.nqueued -= len(grab)
            if not grab:
                self.hint = True
        if not grab:
            self.node.send(0, (NOWORK, thief))
            return
        if self.node.trace is not None:
            self.node.trace.append(("steal", time.time(), thief, len(grab)))
        self._send_tasks(thief, grab)

    def _send_tasks(self, thief: int, grab: list[_Task]) -> None:
        node = self.node
        fc = node.fncache
        descs = []
        bufs: list[Any] = []
        moved: dict[int, list[tuple[int, int, int, int]]] = {}
        for t in grab:
            if t.blob is None:  # a local child: serialize it now, only because it moves
                fut = t.future
                if not _start(fut):
                    continue
                try:
                    t.fid, t.fnblob = fc.pickle_fn(t.fn)
                except Exception as e:  # noqa: BLE001
                    node.finish(t, False, SerializationError(
                        f"cannot pickle the function of {t.label()}: {describe(t.fn)} ({type(e).__name__}: {e})"), 0.0)
                    continue
                try:
                    payload = (t.args, t.kwargs)
                    t.blob, t.bufs = dumps(payload)
                except Exception as e:  # noqa: BLE001
                    if t.kind == CHUNK:
                        err = SerializationError(f"cannot pickle the items of {t.label()}: {e}")
                    else:
                        err = _serial.explain_args_failure(t.label(), t.args, t.kwargs, e)
                    node.finish(t, False, err, 0.0)
                    continue
                t.args = t.kwargs = None
            if t.owner == node.rank:
                with node.owned_lock:  # a hub task sent to this rank's own worker is owned already
                    o = node.owned.setdefault(t.tid, t)
                    o.where = thief
                    o.hop += 1
                    attempt, hop = o.attempt, o.hop
            else:  # handed on: its owner must learn where it went (after the task is sent)
                t.hop += 1
                attempt, hop = t.attempt, t.hop
                moved.setdefault(t.owner, []).append((t.tid, thief, attempt, hop))
            descs.append((t.owner, t.tid, t.fid, fc.outgoing(thief, t.fid, t.fnblob), t.blob,
                          len(t.bufs), t.depth, t.kind, t.parent, attempt, hop))
            bufs.extend(b.raw() if isinstance(b, pickle.PickleBuffer) else b for b in t.bufs)
        if not descs:
            node.send(0, (NOWORK, thief))
            return
        node.send(thief, (TASKS, descs, False), bufs)
        for owner, entries in moved.items():
            node.send(owner, (MOVED, entries))

    def requeue(self, tasks: list[_Task]) -> None:
        """Queue again, here, tasks we own that were lost with a worker."""
        with self.cv:
            for t in tasks:
                t.fn = None  # rebuild from the pickled form kept for this purpose
                t.state = QUEUED
                t.home = self
                self.inbox.appendleft(t)
                self.nqueued += 1
                self.ninbox += 1
            self.idle_reported = False
            self._maybe_spawn_locked()
            self.cv.notify_all()

    def forget(self, rank: int) -> None:
        """Drop queued work owned by ``rank``, which died: nobody wants its results."""
        with self.cv:
            for q in (self.inbox, self.ready):
                for t in q:
                    if t.state == QUEUED and t.owner == rank:
                        t.state = GONE
                        self.nqueued -= 1
                        if q is self.inbox:
                            self.ninbox -= 1
            for key in [k for k in self._acks if k[0] == rank]:
                self._acks.pop(key).set()  # its owner is gone: nothing to wait for
            self.idle_reported = False
            self._maybe_spawn_locked()
            self.cv.notify_all()

    def on_ack(self, owner: int, tid: int) -> None:
        ev = self._acks.pop((owner, tid), None)
        if ev is not None:
            ev.set()

    def _announce(self, task: _Task) -> None:
        """Tell the owner of a task that has outlived a worker that it runs here, and wait
        until the owner knows: if this worker dies now, the loss counts against the task (the
        poison-task rule) and not against tasks that were merely queued beside it."""
        node = self.node
        ev = threading.Event()
        key = (task.owner, task.tid)
        self._acks[key] = ev
        node.send(task.owner, (START, task.tid, task.attempt))
        deadline = time.monotonic() + 30.0
        while not ev.wait(0.5):
            if node.closed or task.owner in node.dead or time.monotonic() > deadline:
                self._acks.pop(key, None)
                return

    def withdraw(self, task: _Task) -> bool:
        """Take a local child that nobody has started out of the queues (to cancel it).

        The lock wait is bounded: a map iterator may be closed by the garbage collector on a
        thread that holds it already. Then False, and the task is cancelled the standard way."""
        if not self.cv.acquire(timeout=0.2):
            return False
        try:
            fut = task.future
            if (task.state != QUEUED or task.home is not self or fut is None
                    or fut._state not in ("PENDING", "CANCELLED")):  # type: ignore[attr-defined]
                return False
            task.state = CLAIMED  # a tombstone in ``ready``, as left by _claim
            self.nqueued -= 1
            self.ntomb += 1
            return True
        finally:
            self.cv.release()

    def nudge(self) -> None:
        """`wake`, with a bounded lock wait (see `withdraw`)."""
        if self.sleepers and self.cv.acquire(timeout=0.2):
            try:
                self.cv.notify_all()
            finally:
                self.cv.release()

    # -- running -------------------------------------------------------------------------
    def _claim(self, futs: Iterable[Future[Any]]) -> _Task | None:
        """Claim the most recently queued local task among those computing ``futs``."""
        best = None
        for f in futs:
            t = getattr(f, "_dtm_task", None)
            if t is not None and t.state == QUEUED and t.home is self:
                if best is None or t.tid > best.tid:
                    best = t
        if best is None:
            return None
        with self.cv:
            if best.state != QUEUED:
                return None
            best.state = CLAIMED
            self.nqueued -= 1
            ready = self.ready
            if ready and ready[-1] is best:  # the usual submit-then-wait: leave no tombstone
                ready.pop()
            else:
                self.ntomb += 1
                if self.ntomb > 1024 and self.ntomb > 2 * len(ready) // 3:
                    self.ready = collections.deque(t for t in ready if t.state == QUEUED)
                    self.ntomb = 0
        return best

    def _execute(self, task: _Task) -> None:
        if not _start(task.future):  # a local child, cancelled: its waiters are told; skip it
            return
        if task.suspect and task.owner != self.rank:
            self._announce(task)
        stack = tls.tasks
        stack.append(task)
        tracing = self.node.trace is not None
        if tracing:
            wall0 = time.time()
        t0 = _perf()
        value: Any
        try:
            try:
                if task.fn is None:
                    self._materialize(task)
            except BaseException as e:  # noqa: BLE001
                ok, value = False, e
            else:
                try:
                    if task.kind == CALL:
                        value = task.fn(*task.args, **task.kwargs)
                    else:
                        items, star = task.args
                        value = run_chunk(task.fn, items, star, task.kwargs)
                    ok = True
                except BaseException as e:  # noqa: BLE001 - task failures go to the future
                    ok, value = False, e
        finally:
            stack.pop()
        dur = _perf() - t0
        self.tasks_run += 1
        n = len(task.args[0]) if task.kind == CHUNK and ok else 1
        key = task.fid if task.fid is not None else id(getattr(task.fn, "__code__", task.fn))
        st = self._fn_rows.get(key)
        if st is None:
            st = self._fn_row(key, task)
        st[1] += 1
        st[2] += dur
        st[3] += n
        if tracing and self.node.trace is not None:
            self.node.trace.append(("task", wall0, dur, task.owner, task.tid, task.parent, st[0],
                                    threading.current_thread().name, ok, n, len(stack)))
        per = dur / max(1, n)
        self.dur = per * n if self.dur is None else 0.8 * self.dur + 0.2 * dur
        self.want = max(1, min(1024, math.ceil(0.002 / max(self.dur, 1e-6))))
        task.args = task.kwargs = task.blob = None
        task.bufs = ()
        self._deliver(task, ok, value, dur)

    def _fn_row(self, key: Any, task: _Task) -> list[Any]:
        """The statistics row of a task function: rows are per name (fresh closures share one),
        at most `_MAX_FN_NAMES` of them, so no table grows with the number of function objects."""
        name = task.fn_label()
        st = self.fn_stats.get(name)
        if st is None:
            if len(self.fn_stats) >= _MAX_FN_NAMES:
                name = "(other functions)"
                st = self.fn_stats.get(name)
            if st is None:
                st = self.fn_stats[name] = [name, 0, 0.0, 0]
        if len(self._fn_rows) >= 4096:
            self._fn_rows.clear()
        self._fn_rows[key] = st
        return st

    def _materialize(self, task: _Task) -> None:
        try:
            fn = self.node.fncache.function(task.fid, task.fnblob)
        except Exception as e:
            hint = ""
            if isinstance(e, AttributeError) and "__main__" in str(e):
                hint = (" A function of the main script that workers cannot find by reference; "
                        "define it at the script's module level.")
            raise SerializationError(
                f"{task.label()} from rank {task.owner}: cannot unpickle its function on rank "
                f"{self.rank}: {type(e).__name__}: {e}.{hint}"
            ) from e
        task.fn = fn
        try:
            payload = loads(task.blob, task.bufs)
        except Exception as e:
            raise SerializationError(
                f"{task.label()} from rank {task.owner}: cannot unpickle its arguments on rank "
                f"{self.rank}: {type(e).__name__}: {e}"
            ) from e
        task.args, task.kwargs = payload

    def _deliver(self, task: _Task, ok: bool, value: Any, dur: float) -> None:
        if task.owner == self.rank:
            node = self.node
            orig = task
            if task.future is None:  # it came back to its owner through messages
                with node.owned_lock:
                    found = node.owned.pop(task.tid, None)
                if found is None:
                    return
                orig = found
            # valid on every rank or on none: what could not have come back from another rank
            # fails here too (a top-level task of rank 0, a child run by its submitter)
            ok, value = _serial.as_if_moved(task.label, self.rank, task.kind == CHUNK, ok, value)
            if orig.depth == 0 and node.hub is not None:
                node.hub.settled(orig)
            node.finish(orig, ok, value, dur)
            self.wake()
            return
        try:
            if ok:
                if task.kind == CHUNK and value[1]:
                    value = (value[0], [(i, _serial.pack_exception(e, f"raised on rank {self.rank}")[0]) for i, e in value[1]])
                data, bufs = dumps(value)
                code = 1
            else:
                data, bufs = _serial.pack_exception(value, f"{task.label()} raised on rank {self.rank}")
                code = 0
        except Exception as e:  # noqa: BLE001
            err = SerializationError(
                f"the result of {task.label()} could not be pickled on rank {self.rank}: "
                f"{describe(value)} ({type(e).__name__}: {e})"
            )
            data, bufs = _serial.pack_exception(err, "")
            code = 0
        raw = [b.raw() for b in bufs]
        now = _perf()
        with self._out_lock:
            box = self._out.get(task.owner)
            if box is None:
                box = self._out[task.owner] = ([], [])
            first = self._out_n == 0
            if first:
                self._out_since = now
            box[0].append((task.tid, code, data, len(raw), dur))
            box[1].extend(raw)
            self._out_n += 1
            flush = raw or self._out_n >= 256 or now - self._out_since > RESULT_DELAY or self.nqueued == 0
        if flush:
            self.flush_results()
        elif first:  # the sender thread flushes it if the next task runs long
            with self.node._send_cv:
                self.node._send_cv.notify()

    def flush_results(self) -> None:
        with self._out_lock:
            if not self._out_n:
                return
            out = self._out
            self._out = {}
            self._out_n = 0
        for owner, (entries, bufs) in out.items():
            self.node.send(owner, (RESULTS, entries), bufs)

    # -- waiting -------------------------------------------------------------------------
    def help_until(self, pred: Callable[[], bool], futs: Iterable[Future[Any]], timeout: float | None) -> None:
        """Called by the token holder instead of blocking; returns when ``pred()`` or timeout."""
        me: _ThreadRec = tls.thread
        if self.token is not me:  # a thread the task started itself: just block politely
            self._plain_wait(pred, timeout)
            return
        futs = list(futs)
        deadline = None if timeout is None else time.monotonic() + timeout
        cv = self.cv
        while not pred():
            task = self._claim(futs)
            if task is not None:
                self._execute(task)
                continue
            if deadline is not None and time.monotonic() >= deadline:
                return
            self.flush_results()
            cv.acquire()
            try:
                if pred():
                    return
                if self.resumable or self.idle > 0 or self.nthreads < self.max_threads:
                    # suspend: give the token away, come back when pred() holds
                    self.token = None
                    self.busy_time += _perf() - self._tok_t
                    self.blocked += 1
                    self.peak_blocked = max(self.peak_blocked, self.blocked)
                    if self.node.trace is not None:
                        cur = tls.tasks[-1] if tls.tasks else None
                        wait0 = time.time()
                    self._maybe_spawn_locked()
                    self._report_idle_locked()
                    cv.notify_all()
                    try:
                        while not pred():
                            if deadline is not None:
                                left = deadline - time.monotonic()
                                if left <= 0:
                                    break
                            else:
                                left = None
                            self.sleepers += 1
                            cv.wait(left)
                            self.sleepers -= 1
                        self.resumable.append(me)
                        while self.token is not None or self.resumable[0] is not me:
                            self.sleepers += 1
                            cv.wait()
                            self.sleepers -= 1
                        self.resumable.popleft()
                        self.token = me
                        self._tok_t = _perf()
                    finally:
                        self.blocked -= 1
                    if self.node.trace is not None:
                        self.node.trace.append(("wait", wait0, time.time() - wait0,
                                                (cur.owner, cur.tid) if cur else None, me.name))
                    continue
                # at the thread cap: lend this thread (and its stack) to queued work
                task = self._pop_locked()
                if task is None:
                    self.token = None
                    self.busy_time += _perf() - self._tok_t
                    self._report_idle_locked()
                    self.sleepers += 1
                    while not pred() and not (self.nqueued and self.token is None and not self.resumable and self.idle == 0):
                        if deadline is not None and time.monotonic() >= deadline:
                            break
                        cv.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
                    self.sleepers -= 1
                    self.resumable.append(me)
                    while self.token is not None or self.resumable[0] is not me:
                        self.sleepers += 1
                        cv.wait()
                        self.sleepers -= 1
                    self.resumable.popleft()
                    self.token = me
                    self._tok_t = _perf()
                    continue
            finally:
                cv.release()
            self._execute(task)

    def _plain_wait(self, pred: Callable[[], bool], timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.cv:
            while not pred():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return
                self.sleepers += 1
                self.cv.wait(left)
                self.sleepers -= 1

    # -- submitting nested work ----------------------------------------------------------
    def submit(self, fn: Callable[..., Any], args: Any, kwargs: dict[str, Any], kind: int = CALL) -> DTMFuture:
        stack = getattr(tls, "tasks", None)
        if stack:
            top = stack[-1]
            depth = top.depth + 1
            parent: tuple[int, int] | None = (top.owner, top.tid)
        else:
            depth, parent = 1, None
        t = _Task(self.rank, self.node.next_tid(), kind, depth)
        t.parent = parent
        t.fn = fn
        t.args = args
        t.kwargs = kwargs
        fut = DTMFuture()
        fut._dtm_task = t
        t.future = fut
        self.push_local(t)
        return fut


class Hub:
    """Rank 0's queue of top-level tasks; matches idle workers with work (its own or stolen)."""

    NONE, HUNGRY, IDLE, STEALING = 0, 1, 2, 3

    def __init__(self, node: Node) -> None:
        self.node = node
        self.lock = threading.Lock()
        self.pending: collections.deque[_Task] = collections.deque()
        self.state: dict[int, int] = {w: self.NONE for w in node.workers}
        self.want: dict[int, int] = {w: 1 for w in node.workers}
        self.tried: dict[int, set[int]] = {w: set() for w in node.workers}
        self.nwaiting = 0  # workers that asked and got nothing yet
        self.outstanding = 0  # top-level tasks not settled
        self.all_done = threading.Condition(self.lock)
        self.shutdown = False
        self._last_poll = 0.0
        self._rr = 0
        self.sent_seq: dict[int, int] = {}

    def submit(self, task: _Task) -> None:
        with self.lock:
            if self.node.broken is not None:
                raise self.node.broken
            self.pending.append(task)
            self.outstanding += 1
            wake = self.nwaiting > 0
        if wake:
            self.node.transport.wakeup()

    def settled(self, task: _Task) -> None:
        with self.lock:
            self.outstanding -= 1
            if self.outstanding <= 0:
                self.all_done.notify_all()

    def cancel_pending(self) -> None:
        """Cancel every queued top-level task (and tell its waiters); keep the retried ones,
        whose futures are running already."""
        with self.lock:
            tasks = list(self.pending)
            self.pending.clear()
        keep = []
        for t in tasks:
            if t.future is not None and t.future.cancel():
                _notify_cancelled(t.future)
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
                _settle(t.future, False, exc)

    # -- comm-thread side ----------------------------------------------------------------
    def _set(self, w: int, new: int) -> None:
        old = self.state[w]
        if old == new:
            return
        waiting = (self.HUNGRY, self.IDLE)
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
            self._set(src, self.IDLE)
        elif st != self.IDLE:
            self._set(src, self.HUNGRY)
        self._serve()

    def on_nowork(self, victim: int, thief: int) -> None:
        if self.state.get(thief) != self.STEALING:
            return
        self.tried[thief].add(victim)
        self._set(thief, self.IDLE)
        self._serve()

    def on_havework(self, victim: int) -> None:
        if self.state.get(victim) == self.IDLE:
            return
        for w, st in self.state.items():
            if st == self.IDLE and w != victim:
                self._steal_for(w, victim)
                return

    def poll_interval(self) -> float | None:
        states = self.state.values()
        if self.IDLE in states and any(st != self.IDLE for st in states):
            return 0.02
        return None

    def tick(self) -> None:
        if self.pending and self.nwaiting:
            self._serve()
        now = time.monotonic()
        if now - self._last_poll > 0.02:
            self._last_poll = now
            for w, st in self.state.items():
                if st == self.IDLE:
                    self.tried[w].clear()
            self._serve()

    def _serve(self) -> None:
        order = [w for w, st in self.state.items() if st == self.IDLE]
        order += [w for w, st in self.state.items() if st == self.HUNGRY]
        for w in order:
            sent: list[_Task] = []
            while self.pending and not sent:  # cancelled tasks must not use up w's turn
                batch: list[_Task] = []
                with self.lock:  # its want, but no more than a fair share of the queue
                    n = min(self.want[w], -(-len(self.pending) // max(1, len(self.state))))
                    while self.pending and len(batch) < n:
                        batch.append(self.pending.popleft())
                for t in batch:
                    if not _start(t.future):  # cancelled
                        self.settled(t)
                        continue
                    sent.append(t)
            if not sent:
                break  # nothing left to hand out
            self._set(w, self.NONE)
            self._dispatch(w, sent)
        if self.pending:
            return
        # idle workers and nothing queued here: find them work elsewhere
        for w, st in list(self.state.items()):
            if st == self.IDLE:
                victims = [v for v in self.node.workers
                           if v != w and v not in self.tried[w] and self.state[v] != self.IDLE]
                if victims:
                    self._rr += 1
                    self._steal_for(w, victims[self._rr % len(victims)])

    def forget_worker(self, rank: int) -> None:
        if rank not in self.state:
            return
        self._set(rank, self.NONE)
        self.state.pop(rank, None)
        self.tried.pop(rank, None)
        self.want.pop(rank, None)
        self.sent_seq.pop(rank, None)
        for w, st in self.state.items():
            self.tried[w].discard(rank)
            if st == self.STEALING:  # its victim may have been the dead one
                self._set(w, self.IDLE)

    def undelivered(self, w: int) -> None:
        """A dispatch to ``w`` could not be sent (its tasks failed): ``w`` still wants work, and
        its requests, which saw no newer dispatch, are not stale."""
        if w not in self.state:
            return
        self.sent_seq[w] = self.sent_seq.get(w, 1) - 1
        self._set(w, self.IDLE)
        self._serve()

    def add_worker(self, rank: int) -> None:
        self.state[rank] = self.NONE
        self.want[rank] = 1
        self.tried[rank] = set()

    def requeue(self, retry: list[_Task]) -> None:
        """Top-level tasks lost with a worker go back to the front of the queue."""
        for t in retry:
            t.where = -1
        with self.lock:
            self.pending.extendleft(reversed(retry))
        self._serve()

    def _steal_for(self, thief: int, victim: int) -> None:
        self._set(thief, self.STEALING)
        self.node.send(victim, (STEAL, thief))

    def _dispatch(self, w: int, tasks: list[_Task]) -> None:
        node = self.node
        fc = node.fncache
        descs = []
        bufs: list[Any] = []
        for t in tasks:
            with node.owned_lock:
                t.where = w
                t.hop += 1
                node.owned[t.tid] = t
            descs.append((t.owner, t.tid, t.fid, fc.outgoing(w, t.fid, t.fnblob), t.blob,
                          len(t.bufs), 0, t.kind, None, t.attempt, t.hop))
            bufs.extend(b.raw() if isinstance(b, pickle.PickleBuffer) else b for b in t.bufs)
        self.sent_seq[w] = self.sent_seq.get(w, 0) + 1
        node.send(w, (TASKS, descs, True), bufs)

    def make_task(
        self, fn: Callable[..., Any], payload: Any, kind: int, pickled: tuple[bytes, bytes] | None = None
    ) -> tuple[_Task, DTMFuture]:
        """``pickled``: (fid, bytes) of ``fn`` from an earlier task of the same call (a map)."""
        node = self.node
        t = _Task(node.rank, node.next_tid(), kind, 0)
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
            if kind == CALL:
                raise _serial.explain_args_failure(t.label(), payload[0], payload[1], e) from e
            raise SerializationError(f"cannot pickle the items of {t.label()}: {type(e).__name__}: {e}") from e
        fut = DTMFuture()
        t.future = fut
        return t, fut


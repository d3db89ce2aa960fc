"""The worker: its queues, the threads that take turns holding its one token (so it uses one core),
what it gives thieves, running tasks, and waiting without idling (see docs/design.md).

Imports `protocol`, `task`, `ports`, `results` and the leaves `_serial`, `_futures`."""

from __future__ import annotations

import collections
import math
import pickle
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable, Iterable

from .. import _serial
from .._futures import DTMFuture, set_running, tls
from .._serial import SerializationError, describe, dumps, loads
from .ports import NodeServices
from .protocol import Kind, MovedEntry, TaskKind, TaskState
from .results import ResultBatch
from .task import Task, run_chunk

# module globals: read for every task, and an Enum attribute costs ~0.1 µs on Python 3.11
QUEUED, CLAIMED, GONE = TaskState.QUEUED, TaskState.CLAIMED, TaskState.GONE
CALL, CHUNK = TaskKind.CALL, TaskKind.CHUNK

#: distinct task function names in a worker's statistics (the rest: "(other functions)")
_MAX_FN_NAMES = 1000

_perf = time.perf_counter


class _ThreadRec:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


class FunctionStats:
    """Time spent per task function: rows ``[name, count, seconds, items]``, one per name (fresh
    closures share one), at most `_MAX_FN_NAMES` of them, so no table grows with the number of
    function objects."""

    def __init__(self) -> None:
        self.rows: dict[str, list[Any]] = {}
        #: recent function keys -> their row (`Worker._execute` counts into it; a miss: `new_row`)
        self.by_key: dict[Any, list[Any]] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def new_row(self, key: Any, task: Task) -> list[Any]:
        """The row of ``task``'s function, first seen under ``key``."""
        name = task.fn_label()
        st = self.rows.get(name)
        if st is None:
            if len(self.rows) >= _MAX_FN_NAMES:
                name = "(other functions)"
                st = self.rows.get(name)
            if st is None:
                st = self.rows[name] = [name, 0, 0.0, 0]
        if len(self.by_key) >= 4096:
            self.by_key.clear()
        self.by_key[key] = st
        return st

    def by_name(self) -> dict[str, list[Any]]:
        """name -> [count, seconds, items], as reported to rank 0."""
        out: dict[str, list[Any]] = {}
        for name, count, total, items in self.rows.values():
            acc = out.setdefault(name, [0, 0.0, 0])
            acc[0] += count
            acc[1] += total
            acc[2] += items
        return out


class Worker:
    """Executes tasks: a deque of local children, an inbox of received tasks, a token, threads.

    Everything below marked ``_locked`` runs with ``cv`` held. Only the token holder runs task
    code; a thread gives the token up when it finishes a task or suspends in a wait, and threads
    that suspended take it back first come, first served, before any new work (``resumable``)."""

    def __init__(self, node: NodeServices, max_threads: int) -> None:
        self.node = node
        self.rank = node.rank
        self.cv = threading.Condition(threading.Lock())
        # queues
        self.ready: collections.deque[Task] = collections.deque()
        self.inbox: collections.deque[Task] = collections.deque()
        self.nqueued = 0
        self.ninbox = 0
        self.ntomb = 0  # claimed tasks still sitting in ``ready``
        # threads and the token
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
        # asking for work
        self.req_outstanding = False
        self.idle_reported = False
        self.hint = False  # said NOWORK to a thief: tell the hub (HAVEWORK) when work comes
        self.dur: float | None = None
        self.want = 1
        self.hub_seq = 0  # dispatches received from the hub (echoed in REQ to spot stale ones)
        # results of tasks owned elsewhere
        self._results = ResultBatch(self.rank)
        # statistics
        self.tasks_run = 0
        self.tasks_stolen = 0
        self.busy_time = 0.0  # time some thread held the token
        self._tok_t = 0.0
        self.started = time.time()
        self.fn_stats = FunctionStats()
        #: (owner, tid) -> set when the owner acknowledged START for a suspect task
        self._acks: dict[tuple[int, int], threading.Event] = {}

    # -- threads and the token -----------------------------------------------------------
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

    def nudge(self) -> None:
        """`wake`, with a bounded lock wait (see `withdraw`)."""
        if self.sleepers and self.cv.acquire(timeout=0.2):
            try:
                self.cv.notify_all()
            finally:
                self.cv.release()

    def close(self) -> None:
        with self.cv:
            self.closing = True
            self.cv.notify_all()

    def _take_token_locked(self, me: _ThreadRec) -> None:
        self.token = me
        self._tok_t = _perf()

    def _drop_token_locked(self) -> None:
        self.token = None
        self.busy_time += _perf() - self._tok_t

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
                        self.token = me  # as _take_token_locked (inline: this loop runs per task)
                        self._tok_t = _perf()
                        cv.release()
                        try:
                            self._execute(task)
                        finally:
                            cv.acquire()
                        self.token = None  # as _drop_token_locked
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
    def _pop_locked(self) -> Task | None:
        """The next task to run: the newest local child (depth first), else the oldest received."""
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

    def push_local(self, task: Task) -> None:
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
            self.node.send(0, (int(Kind.HAVEWORK),))

    def on_tasks(self, src: int, descs: list[tuple[Any, ...]], frames: list[Any], from_hub: bool) -> None:
        """Tasks received (TASKS), from the hub or a victim: into the inbox."""
        fc = self.node.fncache
        pos = 1
        tasks = []
        dead = self.node.dead
        # a TaskDesc, field by field (by position: reading a NamedTuple's fields by attribute
        # costs ~0.3 µs per task; tests/test_scheduler_protocol.py checks these names)
        for owner, tid, fid, fnblob, blob, nbufs, depth, kind, parent, attempt, hop in descs:
            if owner in dead:  # overtaken by the news of its owner's death: nobody wants it
                pos += nbufs
                fc.incoming(src, fid, fnblob)
                continue
            # not unpickled yet: see _materialize
            t = Task(owner, tid, kind, depth, fid, fc.incoming(src, fid, fnblob), blob,
                     frames[pos : pos + nbufs], parent, attempt, hop)
            pos += nbufs
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

    def requeue(self, tasks: list[Task]) -> None:
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

    def withdraw(self, task: Task) -> bool:
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

    def _claim(self, futs: Iterable[Future[Any]]) -> Task | None:
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

    # -- asking the hub for work ---------------------------------------------------------
    def _maybe_request_locked(self) -> None:
        """The inbox is at half of ``want`` or below: ask for more (one request at a time)."""
        if not self.req_outstanding and self.ninbox <= self.want // 2:
            self.req_outstanding = True
            self.node.send(0, (int(Kind.REQ), max(1, self.want - self.ninbox), False, self.hub_seq))

    def _report_idle_locked(self) -> None:
        """Nothing runnable here: ask the hub for work (once per idle period)."""
        if self.nqueued == 0 and not self.resumable and not self.idle_reported and not self.closing:
            self.idle_reported = True
            self.req_outstanding = True
            self.flush_results()
            self.node.send(0, (int(Kind.REQ), self.want, True, self.hub_seq))

    # -- giving work to thieves ----------------------------------------------------------
    def on_steal(self, thief: int) -> None:
        """The hub asks for work for ``thief`` (STEAL): send it some, or say NOWORK."""
        if thief in self.node.dead:
            return
        with self.cv:
            grab = self._grab_locked()
            if not grab:
                self.hint = True
        if not grab:
            self.node.send(0, (int(Kind.NOWORK), thief))
            return
        if self.node.trace is not None:
            self.node.trace.append(("steal", time.time(), thief, len(grab)))
        self._send_tasks(thief, grab)

    def _grab_locked(self) -> list[Task]:
        """A thief's share: half the inbox (its newest end), else the oldest ready tasks of the
        shallowest depth (the biggest subtrees, Cilk style)."""
        grab: list[Task] = []
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
        return grab

    def _send_tasks(self, thief: int, grab: list[Task]) -> None:
        """Send ``grab`` to ``thief``; tell the owners of those we do not own where they went
        (after the tasks: "Where every task is" in docs/design.md)."""
        node = self.node
        fc = node.fncache
        descs = []
        bufs: list[Any] = []
        moved: dict[int, list[tuple[Any, ...]]] = {}
        for t in grab:
            if t.blob is None and not self._pickle_child(t):
                continue
            if t.owner == node.rank:
                with node.owned_lock:  # a hub task sent to this rank's own worker is owned already
                    o = node.owned.setdefault(t.tid, t)
                    o.where = thief
                    o.hop += 1
                    attempt, hop = o.attempt, o.hop
            else:  # handed on: its owner must learn where it went (after the task is sent)
                t.hop += 1
                attempt, hop = t.attempt, t.hop
                moved.setdefault(t.owner, []).append(MovedEntry.wire(t.tid, thief, attempt, hop))
            descs.append(t.wire_desc(fc.outgoing(thief, t.fid, t.fnblob), attempt, hop))
            bufs.extend(b.raw() if isinstance(b, pickle.PickleBuffer) else b for b in t.bufs)
        if not descs:
            node.send(0, (int(Kind.NOWORK), thief))
            return
        node.send(thief, (int(Kind.TASKS), descs, False), bufs)
        for owner, entries in moved.items():
            node.send(owner, (int(Kind.MOVED), entries))

    def _pickle_child(self, t: Task) -> bool:
        """Serialize a local child, only because it moves. False if it stays: cancelled (its
        waiters are told), or unpicklable (it fails, naming what could not be pickled)."""
        node = self.node
        if not set_running(t.future):
            return False
        try:
            t.fid, t.fnblob = node.fncache.pickle_fn(t.fn)
        except Exception as e:  # noqa: BLE001
            node.finish(t, False, SerializationError(
                f"cannot pickle the function of {t.label()}: {describe(t.fn)} ({type(e).__name__}: {e})"), 0.0)
            return False
        try:
            payload = (t.args, t.kwargs)
            t.blob, t.bufs = dumps(payload)
        except Exception as e:  # noqa: BLE001
            if t.kind == CHUNK:
                err = SerializationError(f"cannot pickle the items of {t.label()}: {e}")
            else:
                err = _serial.explain_args_failure(t.label(), t.args, t.kwargs, e)
            node.finish(t, False, err, 0.0)
            return False
        t.args = t.kwargs = None
        return True

    # -- the poison-task rule ------------------------------------------------------------
    def on_ack(self, owner: int, tid: int) -> None:
        ev = self._acks.pop((owner, tid), None)
        if ev is not None:
            ev.set()

    def _announce(self, task: Task) -> None:
        """Tell the owner of a task that has outlived a worker that it runs here, and wait
        until the owner knows: if this worker dies now, the loss counts against the task (the
        poison-task rule) and not against tasks that were merely queued beside it."""
        node = self.node
        ev = threading.Event()
        key = (task.owner, task.tid)
        self._acks[key] = ev
        node.send(task.owner, (int(Kind.START), task.tid, task.attempt))
        deadline = time.monotonic() + 30.0
        while not ev.wait(0.5):
            if node.closed or task.owner in node.dead or time.monotonic() > deadline:
                self._acks.pop(key, None)
                return

    # -- running a task ------------------------------------------------------------------
    def _execute(self, task: Task) -> None:
        """Run ``task`` on this thread (which holds the token), count it, hand its outcome on.
        (One method on purpose: it runs for every task.)"""
        if not set_running(task.future):  # a local child, cancelled: its waiters are told; skip it
            return
        if task.suspect and task.owner != self.rank:
            # results held for batching go first (START follows them on the same connection):
            # if this task kills the worker, tasks that had finished here are not counted lost
            self.flush_results()
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
        # statistics, and the duration estimate: ``want`` = tasks to ask for to cover ~2 ms
        self.tasks_run += 1
        n = len(task.args[0]) if task.kind == CHUNK and ok else 1
        key = task.fid if task.fid is not None else id(getattr(task.fn, "__code__", task.fn))
        st = self.fn_stats.by_key.get(key)
        if st is None:
            st = self.fn_stats.new_row(key, task)
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
        if task.owner == self.rank:
            self._settle_here(task, ok, value, dur)
        else:
            self._send_outcome(task, ok, value, dur)

    def _materialize(self, task: Task) -> None:
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

    # -- outcomes ------------------------------------------------------------------------
    def _send_outcome(self, task: Task, ok: bool, value: Any, dur: float) -> None:
        """The outcome of a task owned elsewhere: packed here, batched (`ResultBatch`)."""
        send_now, first = self._results.add(task, ok, value, dur)
        if send_now or self.nqueued == 0:
            self.flush_results()
        elif first:  # the sender thread flushes it if the next task runs long
            self.node.wake_sender()

    def _settle_here(self, task: Task, ok: bool, value: Any, dur: float) -> None:
        """The outcome of a task this rank owns: settle its future, checked as if it had moved."""
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
        if orig.depth:  # a nested task (the common case here): nothing to count at the hub
            node.finish(orig, ok, value, dur)
        else:
            node.settle_owned(orig, ok, value, dur)
        self.wake()

    def flush_results(self) -> None:
        """Send every held outcome now."""
        for owner, (entries, bufs) in self._results.take().items():
            self.node.send(owner, (int(Kind.RESULTS), entries), bufs)

    def results_due(self) -> float | None:
        """When (``time.perf_counter``) held outcomes must be sent; None if none are held."""
        return self._results.due()

    # -- waiting -------------------------------------------------------------------------
    def help_until(self, pred: Callable[[], bool], futs: Iterable[Future[Any]], timeout: float | None) -> None:
        """Called by the token holder instead of blocking; returns when ``pred()`` or timeout.

        In order: run an awaited child still queued here inline; else suspend (the token goes to
        another thread) while under ``max_threads``; at the cap, run other queued work inline."""
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
                    self._suspend_locked(me, pred, deadline)
                    continue
                # at the thread cap: lend this thread (and its stack) to queued work
                task = self._pop_locked()
                if task is None:  # none: sleep until pred() or queued work nobody else can run
                    self._drop_token_locked()
                    self._report_idle_locked()
                    self._sleep_and_retake_locked(
                        me, lambda: pred() or bool(self.nqueued and self.token is None
                                                   and not self.resumable and self.idle == 0),
                        deadline)
                    continue
            finally:
                cv.release()
            self._execute(task)

    def _suspend_locked(self, me: _ThreadRec, pred: Callable[[], bool], deadline: float | None) -> None:
        """Give the token to another thread (an idle one, or a new one) until ``pred()``."""
        self._drop_token_locked()
        self.blocked += 1
        self.peak_blocked = max(self.peak_blocked, self.blocked)
        if self.node.trace is not None:
            cur = tls.tasks[-1] if tls.tasks else None
            wait0 = time.time()
        self._maybe_spawn_locked()
        self._report_idle_locked()
        self.cv.notify_all()
        try:
            self._sleep_and_retake_locked(me, pred, deadline)
        finally:
            self.blocked -= 1
        if self.node.trace is not None:
            self.node.trace.append(("wait", wait0, time.time() - wait0,
                                    (cur.owner, cur.tid) if cur else None, me.name))

    def _sleep_and_retake_locked(self, me: _ThreadRec, until: Callable[[], bool], deadline: float | None) -> None:
        """Off the token: sleep until ``until()`` (or the deadline), then queue as resumable
        and take the token back when it is free and this thread's turn."""
        cv = self.cv
        self.sleepers += 1  # before testing ``until``: a `wake` after the test cannot be missed
        try:
            while not until():
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                else:
                    left = None
                cv.wait(left)
        finally:
            self.sleepers -= 1
        self.resumable.append(me)
        while self.token is not None or self.resumable[0] is not me:
            self.sleepers += 1
            cv.wait()
            self.sleepers -= 1
        self.resumable.popleft()
        self._take_token_locked(me)

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

    # -- nested work and statistics ------------------------------------------------------
    def submit(self, fn: Callable[..., Any], args: Any, kwargs: dict[str, Any], kind: TaskKind = CALL) -> DTMFuture:
        """A nested task (a child of the running one): into the ready deque, where it runs
        inline if awaited while still there, or is stolen."""
        stack = getattr(tls, "tasks", None)
        if stack:
            top = stack[-1]
            depth = top.depth + 1
            parent: tuple[int, int] | None = (top.owner, top.tid)
        else:
            depth, parent = 1, None
        t = Task(self.rank, self.node.next_tid(), kind, depth)
        t.parent = parent
        t.fn = fn
        t.args = args
        t.kwargs = kwargs
        fut = DTMFuture()
        fut._dtm_task = t
        t.future = fut
        self.push_local(t)
        return fut

    def stats(self) -> dict[str, Any]:
        """This worker's part of the STOPPED report."""
        return dict(tasks_run=self.tasks_run, busy=self.busy_time, stolen=self.tasks_stolen,
                    started=self.started, peak_threads=self.peak_threads,
                    functions=self.fn_stats.by_name())

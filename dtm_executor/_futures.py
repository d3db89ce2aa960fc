"""Futures that let a waiting task lend its worker to other work.

`DTMFuture` is a real `concurrent.futures.Future`. When a thread that is executing a task waits
on one (``result``, ``exception``, or the standard ``wait``/``as_completed``, which block on an
event installed through ``Future._waiters``), the wait is routed to the worker's scheduler, which
runs the awaited child inline if it is still queued locally (Cilk style) or lends the worker to
other tasks meanwhile. Outside tasks, they behave exactly like standard futures.

A leaf: imports no other module of the package (the scheduler installs itself through ``tls``).
"""

from __future__ import annotations

import itertools
import threading
import weakref
from concurrent.futures import Future, TimeoutError
from concurrent.futures._base import CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED, PENDING
from typing import Any, Callable, Iterable, Protocol

DONE_STATES = (CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED)

#: Completion order of this process's futures (``_dtm_seq``): DTM's "the last finished request".
SEQ = itertools.count(1)

#: Per-thread execution context: ``worker`` is set on threads that execute tasks.
tls = threading.local()


class _Helper(Protocol):
    def help_until(
        self, pred: Callable[[], bool], futures: Iterable[Future[Any]], timeout: float | None
    ) -> None: ...

    def wake(self) -> None: ...


def executing_worker() -> Any:
    return getattr(tls, "worker", None)


class DTMFuture(Future):  # type: ignore[type-arg]
    """A standard Future whose waits, inside a task, keep the worker busy."""

    def __init__(self) -> None:
        super().__init__()
        self._waiters = _Waiters(self)  # type: ignore[assignment]
        self._dtm_task: Any = None
        self._dtm_dur = 0.0
        #: when it settled, in this process's order (0: not yet). Stamped just before the state
        #: changes, so a done future always has its stamp (waitAny/testAny compare them).
        self._dtm_seq = 0

    def set_result(self, result: Any) -> None:
        if self._state not in DONE_STATES:  # type: ignore[attr-defined]
            self._dtm_seq = next(SEQ)
        super().set_result(result)

    def set_exception(self, exception: BaseException | None) -> None:
        if self._state not in DONE_STATES:  # type: ignore[attr-defined]
            self._dtm_seq = next(SEQ)
        super().set_exception(exception)

    def cancel(self) -> bool:
        if self._state == PENDING:  # type: ignore[attr-defined]
            self._dtm_seq = next(SEQ)  # if it starts running instead, its result stamps again
        return super().cancel()

    def _is_done(self) -> bool:
        return self._state in DONE_STATES  # type: ignore[attr-defined]

    def _help(self, timeout: float | None) -> None:
        if self._state not in DONE_STATES:  # type: ignore[attr-defined]
            w = getattr(tls, "worker", None)
            if w is not None:
                w.help_until(self._is_done, (self,), timeout)
                if self._state not in DONE_STATES:  # type: ignore[attr-defined]
                    raise TimeoutError()

    def result(self, timeout: float | None = None) -> Any:
        self._help(timeout)
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self._help(timeout)
        return super().exception(timeout)


class _Waiters(list):  # type: ignore[type-arg]
    """``Future._waiters`` hook: a thread about to block in ``wait``/``as_completed`` inside a
    task gets an event whose ``wait`` helps instead of blocking."""

    __slots__ = ("fut",)

    def __init__(self, fut: DTMFuture) -> None:
        super().__init__()
        self.fut = weakref.ref(fut)  # weak: no future <-> list cycle for the collector to find

    def append(self, waiter: Any) -> None:
        w = getattr(tls, "worker", None)
        if w is not None:
            ev = getattr(waiter, "event", None)
            if type(ev) is not _HelpEvent:
                flag = ev.is_set() if ev is not None else False
                ev = _HelpEvent(w)
                if flag:
                    ev.set()
                waiter.event = ev
            fut = self.fut()
            if fut is not None:
                ev.futures.append(fut)
        super().append(waiter)


class _HelpEvent(threading.Event):
    def __init__(self, worker: _Helper) -> None:
        super().__init__()
        self._w = worker
        self.futures: list[Future[Any]] = []

    def set(self) -> None:
        super().set()
        self._w.wake()

    def wait(self, timeout: float | None = None) -> bool:
        if getattr(tls, "worker", None) is self._w and not self.is_set():
            self._w.help_until(self.is_set, self.futures, timeout)
            return self.is_set()
        return super().wait(timeout)


# -- moving a future through its states (for the scheduler, and for whoever cancels) ----------------
def settle(fut: Future[Any], ok: bool, value: Any) -> None:
    """Set a future's result (``ok``) or exception; a cancelled one only has its waiters told."""
    try:
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)
    except Exception:  # noqa: BLE001 - already settled or cancelled
        notify_cancelled(fut)  # a task dropped while its future was cancelled: tell its waiters


def notify_cancelled(fut: Future[Any]) -> None:
    """Tell ``wait()``/``as_completed()`` about a cancelled future that will never run.

    ``Future.cancel()`` wakes ``result()`` and runs callbacks, but ``wait``/``as_completed`` count
    only ``CANCELLED_AND_NOTIFIED``, which ``set_running_or_notify_cancel()`` sets (once)."""
    if fut._state == "CANCELLED":  # type: ignore[attr-defined]
        try:
            fut.set_running_or_notify_cancel()
        except RuntimeError:  # notified meanwhile by another thread
            pass


def set_running(fut: Future[Any] | None) -> bool:
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
    home = task.home if task is not None else None  # the worker whose queue holds it, if any
    if home is not None and not home.withdraw(task):
        # a local child some thread has claimed, to run or to send: that thread tells the waiters
        return fut.cancel()
    if not fut.cancel():  # at the hub, a cancelled task is dropped when its turn comes
        return False
    notify_cancelled(fut)
    if home is not None:
        home.nudge()  # a waiter of this worker may be asleep on it
    return True

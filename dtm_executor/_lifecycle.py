"""The lifecycle of this process's runs (one per `DTMExecutor`): which are live and which not torn
down yet, the most recently created executor behind `current_executor`, draining, teardown, and
the interpreter's exit.

Imports the scheduler and the leaves only. Above it, the transports end runs too (MPI's rank 0
at the end of its program); the executor registers its runs here (`started`) and, at import,
the factory of the handle that tasks see (`set_nested_handle`): this module never imports it.
"""

from __future__ import annotations

import atexit
import sys
import threading
import weakref
from typing import Any, Callable

from ._errors import BrokenDTMExecutor
from ._futures import executing_worker
from ._scheduler import Kind, Node

#: runs not torn down yet, by id(node): drained at interpreter exit
_active: dict[int, tuple[Node, Any]] = {}
#: every run whose executor is alive (torn down or not), by executor
_live: "weakref.WeakKeyDictionary[Any, tuple[Node, Any]]" = weakref.WeakKeyDictionary()
_last_created: list[weakref.ReferenceType[Any]] = []
_shut: "weakref.WeakSet[Any]" = weakref.WeakSet()  # executors that accept no more work
_interpreter_exiting = [False]
_nested_handle: list[Callable[[Any], Any]] = []

#: one lock per node: teardowns of the same pool (``shutdown(wait=False)`` then ``shutdown()``,
#: a drain at exit) run one after the other, so nothing is closed twice (a file descriptor closed
#: twice may by then belong to someone else), and the later caller returns once all is stopped
_teardown_locks: "weakref.WeakKeyDictionary[Node, threading.Lock]" = weakref.WeakKeyDictionary()
_teardown_locks_guard = threading.Lock()


def set_nested_handle(factory: Callable[[Any], Any]) -> None:
    """``factory(worker)``: the executor a task running on ``worker`` sees (set by `_executor`)."""
    _nested_handle[:] = [factory]


def started(executor: Any, node: Node, pool: Any) -> None:
    """A new run: drained at exit until torn down; its executor is now `current_executor`."""
    _live[executor] = (node, pool)
    _active[id(node)] = (node, pool)
    _last_created[:] = [weakref.ref(executor)]


def shut_down(executor: Any) -> None:
    """``executor`` accepts no more work: it is no longer `current_executor` (an older one
    does not become it again)."""
    _shut.add(executor)
    if _last_created and _last_created[0]() is executor:
        _last_created.clear()


def is_shut_down(executor: Any) -> bool:
    return executor in _shut


def exiting() -> bool:
    """Whether the interpreter is exiting (no new work is accepted)."""
    return _interpreter_exiting[0]


def live_runs() -> list[tuple[Node, Any]]:
    """(node, pool) of every run whose executor is alive."""
    return list(_live.values())


def current_executor() -> Any:
    """The executor to use for nested work: the running worker's inside a task, else the most
    recently created `DTMExecutor` of this process that is not shut down."""
    w = executing_worker()
    if w is not None:
        return _nested_handle[0](w)
    ref = _last_created[0] if _last_created else None
    ex = ref() if ref is not None else None
    if ex is None:
        raise RuntimeError("no DTMExecutor is running in this process (and this is not a task)")
    return ex


def fail(node: Node, exc: BaseException) -> None:
    """Fail every task of ``node``'s run that is not settled yet with ``exc``."""
    node.fail_all(exc)


def drain(node: Node) -> None:
    """Wait until every top-level task has settled (or the pool broke or stopped)."""
    node.wait_settled()


def drain_in_background(node: Node, pool: Any) -> None:
    def run() -> None:
        drain(node)
        teardown(node, pool)

    threading.Thread(target=run, name="dtm-drain", daemon=True).start()


def teardown(node: Node, pool: Any, grace: float = 5.0, report_timeout: float = 0.0) -> dict[int, Any] | None:
    """Stop the workers; with ``report_timeout``, first collect their stats/trace reports."""
    with _teardown_locks_guard:
        lock = _teardown_locks.setdefault(node, threading.Lock())
    with lock:
        if node.closed:
            return None
        return _teardown_locked(node, pool, grace, report_timeout)


def _teardown_locked(node: Node, pool: Any, grace: float, report_timeout: float) -> dict[int, Any]:
    _active.pop(id(node), None)
    remote = [w for w in node.workers if w != node.rank]
    node.stopping = True  # workers closing their connections now is not a failure
    for w in remote:
        try:
            node.send(w, (int(Kind.SHUTDOWN),))
        except Exception:  # noqa: BLE001
            pass
    reports = node.collect_reports(remote, report_timeout) if report_timeout > 0 else {}
    node.flush_sends(min(grace, 2.0))
    own = node.stats_report()
    node.close()
    pool.join(grace)
    pool.transport.close()
    reports.setdefault(node.rank, (own, node.trace))
    return reports


def at_exit() -> None:
    """At interpreter exit: finish every active run (as the standard library's executors do),
    or, when the program died of Ctrl-C, stop them at once."""
    _interpreter_exiting[0] = True
    last = getattr(sys, "last_exc", None) or getattr(sys, "last_value", None)
    interrupted = isinstance(last, KeyboardInterrupt)  # the program died of Ctrl-C
    for node, pool in list(_active.values()):
        try:
            if interrupted:
                fail(node, BrokenDTMExecutor("the program was interrupted (KeyboardInterrupt)"))
                teardown(node, pool, grace=0.0)
            else:  # like the stdlib: finish submitted work first
                drain(node)
                teardown(node, pool)
        except Exception:  # noqa: BLE001
            pass


atexit.register(at_exit)

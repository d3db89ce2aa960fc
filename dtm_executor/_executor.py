"""`DTMExecutor`: the public face over the node, hub, worker and transport machinery."""

from __future__ import annotations

import atexit
import functools
import logging
import operator
import os
import pickle
import threading
import weakref
from concurrent.futures import Executor, Future
from typing import Any, Callable, Iterable, Iterator, Mapping, TypeVar


from . import _map, _options, _runtime, _serial
from ._transports import local as _local
from ._control import ControlMixin
from ._errors import BrokenDTMExecutor
from ._futures import executing_worker
from ._runtime import CALL, CHUNK, SHUTDOWN, Node

log = logging.getLogger("dtm_executor")

T = TypeVar("T")


_live: "weakref.WeakSet[DTMExecutor]" = weakref.WeakSet()
_last_created: list[weakref.ReferenceType[DTMExecutor]] = []
_interpreter_exiting = [False]


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class DTMExecutor(ControlMixin, Executor):
    """An `Executor` whose tasks may submit and wait on subtasks at any depth.

    ``DTMExecutor()`` inside a running task (or a `DTMExecutor` pickled into one) is the
    executor of the worker running that task: nested work goes to its local deque and is
    balanced from there. Create executors under ``if __name__ == "__main__":``: workers import
    the main module, as multiprocessing's *spawn* does. ``shutdown(wait=True,
    cancel_futures=False)`` and ``with`` behave as in the standard library (Ctrl-C in a
    ``with`` block stops the workers at once).

    :param max_workers: worker processes (default: the CPUs this process may use); under MPI
        the number of ranks decides, with a hostfile its slots. ``<= 0``: ``ValueError``.
    :param transport: ``"auto"`` (``$DTM_EXECUTOR_TRANSPORT`` if set; TCP if ``hostfile=`` or
        ``hosts=`` is given; MPI under an MPI launcher with several ranks; else local
        processes), ``"local"``, ``"mpi"`` or ``"tcp"``; any case.
    :param initializer: called with ``*initargs`` once in each worker before any task.
    :param max_threads: threads a worker may hold for tasks suspended in a wait (>= 2); at
        the cap a waiting task runs queued work on its own stack.
    :param max_retries: times a task is run again after the worker running it died, before it
        fails with `WorkerLostError`.
    :param print_summary: print a table per function and per worker at shutdown.
    :param progress: a progress bar (tqdm, else log lines) for every mapping call.
    :param trace_dir: record a trace of the run and write it there at shutdown.
    :param options: DTM's option names (``taskGranularity=``, ``printSummary=``,
        ``setTraceMode=``, ``traceDir=``, ``loadBalancer=``, ``communicationManager=``, or
        their Python spellings such as ``task_granularity=``), and the TCP transport's options
        (``hostfile``, ``hosts``, ``ssh_command``, ``remote_python``, ``remote_dir``,
        ``tls_cert``, ``tls_key``, ``tls_ca``, ``connect_timeout``, ``start_timeout``,
        ``handshake_timeout``, ``listen_address``, ``port``, ``max_frame_bytes``; see
        docs/tcp.md). Any other name is a ``TypeError``, as for any Python call.
    """

    _nested = False
    _show_progress = False  # nested handles (inside tasks) never draw progress bars

    def __new__(cls, *args: Any, **kwargs: Any) -> "DTMExecutor":
        w = executing_worker()
        if w is not None:
            return _nested_handle(w)
        return super().__new__(cls)

    def __init__(
        self,
        max_workers: int | None = None,
        *,
        transport: str = "auto",
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
        max_threads: int = 16,
        max_retries: int = 3,
        print_summary: bool = False,
        progress: bool = False,
        trace_dir: str | os.PathLike[str] | None = None,
        **options: Any,
    ) -> None:
        if self._nested:
            return
        if _local.booting():
            raise RuntimeError(
                "a DTMExecutor was created while a worker imported the main module; "
                "start executors under `if __name__ == '__main__':` (as with multiprocessing)"
            )
        if max_workers is None:
            max_workers = _usable_cpus()
        try:
            if isinstance(max_workers, bool):
                raise TypeError
            max_workers = operator.index(max_workers)  # numpy's integers too
        except TypeError:
            raise TypeError(f"max_workers must be an int, not {max_workers!r}") from None
        if max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")  # the standard pools' words
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if not isinstance(max_threads, int) or max_threads < 2:
            raise ValueError(f"max_threads must be an int >= 2, not {max_threads!r}")
        if not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be an int >= 0, not {max_retries!r}")
        kind = _choose_transport(transport, options)
        self._kind = kind
        dtm_options = _options.take_executor_options(options, kind)  # DTM's names; bad value: ValueError
        # the rest: the transport's own options; a typo is a TypeError (before any worker starts)
        pool_options = _options.take_transport_options(options, kind, transport.strip().lower() != "auto")
        print_summary = print_summary or dtm_options.print_summary
        if trace_dir is None and dtm_options.trace_mode:
            trace_dir = dtm_options.trace_dir
        self._granularity = dtm_options.task_granularity
        self._max_workers = max_workers
        self._shutdown_lock = threading.Lock()
        self._shutdown = False
        try:
            # by reference where possible (like tasks), so a __main__ initializer sets the
            # globals of the worker's own copy of the script, not of a pickled-by-value clone
            init_blob = _serial.dumps_inband((initializer, tuple(initargs)))
        except Exception as e:
            raise pickle.PicklingError(f"cannot pickle the initializer or its arguments: {e}") from e
        # everything a worker's own node acts on (nested tasks are owned by workers)
        opts = {"max_threads": max_threads, "trace": trace_dir is not None, "max_retries": max_retries}
        self._print_summary = bool(print_summary)
        self._show_progress = bool(progress)  # a bar (tqdm) or log lines per map: see _progress
        self._trace_dir = None if trace_dir is None else os.fspath(trace_dir)
        self._pool = _POOLS[kind](max_workers, opts, init_blob, pool_options)  # pops what it knows
        _options.warn_unknown(pool_options)  # left by a pool registered elsewhere: named
        node = Node(self._pool.transport, hub=True, worker=self._pool.local_worker,
                    workers=list(self._pool.workers), max_threads=max_threads)
        self._max_workers = len(self._pool.workers)
        self._node = node
        assert node.hub is not None
        self._hub: _runtime.Hub = node.hub
        node.on_lost = functools.partial(_on_worker_lost, node, self._pool)  # no ref to self
        node.max_retries = max_retries
        node.on_start_failed = getattr(self._pool, "stop_replacing", None)
        if trace_dir is not None:
            node.trace = []
        node.start()
        _live.add(self)
        _last_created[:] = [weakref.ref(self)]
        _active[id(node)] = (node, self._pool)
        # Dropped without shutdown: finish the submitted work, then stop (as the stdlib does).
        self._finalizer = weakref.finalize(self, _drain_in_background, node, self._pool)
        self._finalizer.atexit = False  # _at_exit drains every active pool itself

    # -- Executor interface --------------------------------------------------------------
    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Schedule ``fn(*args, **kwargs)`` and return a `concurrent.futures.Future` of its result.

        Inside a task the child goes to this worker's local queue: waiting on it runs it inline
        if it is still queued, else lends the worker to other work. ``fn`` travels by reference
        when it can (a module-level function), by value otherwise (lambdas, closures). A
        failure is raised again by ``result()`` with the worker's traceback as its
        ``__cause__`` (a `RemoteTraceback`)."""
        if self._nested:
            return self._worker.submit(fn, args, kwargs)  # type: ignore[return-value]
        self._check_open()
        task, fut = self._hub.make_task(fn, (args, kwargs), CALL)
        self._hub.submit(task)
        return fut  # type: ignore[return-value]

    def map(  # type: ignore[override]
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | None = None,
        buffersize: int | None = None,
    ) -> Iterator[T]:
        """Like ``map(fn, *iterables)``, computed in parallel: an iterator of the results in
        order, started at once (as the standard `concurrent.futures.Executor.map`).

        The input is read lazily, a bounded window ahead of the consumer. ``chunksize`` fixes
        the items per task; left out, chunks start at one item and grow to about 10 ms of work
        (at least ``task_granularity``), smaller again at the end so that it balances.
        ``buffersize`` (Python 3.14's meaning, on every Python): at most that many items read
        and not yet yielded. ``timeout`` (seconds, for the whole map): `TimeoutError` from the
        iterator past it. An item's exception is raised by the iterator at that item, after
        the results before it."""
        if not self._nested:
            self._check_open()
        return _map.chunked_map(
            functools.partial(self._submit_chunk, pin=[]), fn, iterables, timeout, chunksize,
            self._nworkers(), self._granularity,
            progress=_progress_start() if self._show_progress else None, buffersize=buffersize,
        )

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if self._nested:
            return  # the pool belongs to the program that started it
        with self._shutdown_lock:
            already = self._shutdown
            self._shutdown = True
        if cancel_futures:
            self._hub.cancel_pending()
        if already and not wait:
            return
        if wait:
            self._wait_and_close()
        else:
            threading.Thread(target=self._wait_and_close, name="dtm-shutdown", daemon=True).start()

    def __exit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> bool | None:
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt) and not self._nested:
            self._terminate("interrupted (KeyboardInterrupt)")  # Ctrl-C: stop now, do not drain
            return None
        return super().__exit__(exc_type, exc_val, exc_tb)

    def _terminate(self, why: str) -> None:
        with self._shutdown_lock:
            self._shutdown = True
        self._hub.cancel_pending()
        self._node._fail_all(BrokenDTMExecutor(f"the executor was stopped: {why}"))
        _teardown(self._node, self._pool, grace=0.0)

    def __reduce__(self) -> tuple[Any, ...]:
        return (current_executor, ())

    # -- internals -----------------------------------------------------------------------
    @property
    def max_workers(self) -> int:
        """The number of workers (ranks that run tasks)."""
        return self._max_workers

    def _nworkers(self) -> int:
        if self._nested:
            return max(1, len(self._node.workers))
        return self._max_workers

    def _check_open(self) -> None:
        if self._node.broken is not None:
            raise BrokenDTMExecutor(str(self._node.broken))
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        if _interpreter_exiting[0]:
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")

    def _submit_chunk(
        self, fn: Callable[..., Any], items: list[Any], star: bool, pin: list[Any] | None = None
    ) -> Future[Any]:
        """``pin``: one list per map call, so that all its chunks carry ``fn`` as pickled with the
        first one, at the call (not as it is when a later chunk is submitted)."""
        if self._nested:
            return self._worker.submit(fn, (items, star), {}, kind=CHUNK)
        task, fut = self._hub.make_task(fn, ((items, star), {}), CHUNK, pin[0] if pin else None)
        if pin is not None and not pin:
            pin.append((task.fid, task.fnblob))
        self._hub.submit(task)
        return fut

    def _wait_and_close(self) -> None:
        _drain(self._node)
        want_reports = self._print_summary or self._trace_dir is not None
        reports = _teardown(self._node, self._pool, report_timeout=5.0 if want_reports else 0.0)
        if reports is not None and want_reports:
            self._emit_reports(reports)

    def _emit_reports(self, reports: dict[int, Any]) -> None:
        import sys

        from . import _report

        if self._print_summary:
            sys.stdout.write(_report.format_summary(reports) + "\n")
            sys.stdout.flush()
        if self._trace_dir is not None:
            files = _report.write_trace(self._trace_dir, reports)
            log.info("trace written: %s", ", ".join(files))



#: Pool factories by transport name: ``factory(max_workers, opts, init_blob, options)`` (it pops
#: the keyword ``options`` it understands from that dict) returns an
#: object with ``transport``, ``workers`` (ranks that execute tasks), ``local_worker`` (whether
#: rank 0 executes tasks too), ``exit_status(rank)``, ``join(timeout)`` and ``kill()``.
_POOLS: dict[str, Callable[..., Any]] = {"local": _local.LocalPool}


def _tcp_pool(*args: Any) -> Any:
    from ._transports.ssh import TcpPool  # imported when used: ssl and friends cost start-up time

    return TcpPool(*args)


_POOLS["tcp"] = _tcp_pool


def _progress_start() -> Callable[[Any, int | None], Any]:
    from . import _progress

    return _progress.start


def _mpi_pool(*args: Any) -> Any:
    from ._transports.mpi import MPIPool  # imported when used: mpi4py initializes MPI on import

    return MPIPool(*args)


_POOLS["mpi"] = _mpi_pool


def _choose_transport(transport: str, options: Mapping[str, Any] | None = None) -> str:
    """The transport's name in `_POOLS` (names are case-insensitive). ``"auto"``:
    ``$DTM_EXECUTOR_TRANSPORT`` if set (the launcher's ``--transport``), else TCP when hosts are
    given (``hostfile=``/``hosts=`` in ``options``, as the launcher's ``--hostfile``, or the
    legacy ``--dtmTCPhosts``), else MPI when started by an MPI launcher with more than one rank,
    else local worker processes."""
    if not isinstance(transport, str):
        raise TypeError(f"transport must be a string such as 'local' or 'tcp', not {transport!r}")
    names = {k.lower(): k for k in _POOLS}
    choices = f"one of {sorted(_POOLS)} or 'auto'"
    name = transport.strip().lower()
    hosts = [k for k in ("hostfile", "hosts") if options and options.get(k) is not None]
    if name == "auto":
        raw = os.environ.get("DTM_EXECUTOR_TRANSPORT", "")
        env = raw.strip().lower()
        if env and env != "auto":
            if env not in names:
                raise ValueError(f"DTM_EXECUTOR_TRANSPORT={raw!r} is not a transport: expected {choices}")
            if hosts and names[env] != "tcp":
                raise ValueError(
                    f"{hosts[0]}= asks for the 'tcp' transport, but DTM_EXECUTOR_TRANSPORT={raw!r} "
                    f"selects {names[env]!r}"
                )
            return names[env]
        if hosts:
            return "tcp"
        from ._hostfile import ENV_HOSTFILE, argv_hostfile
        from ._transports.mpi import under_mpi_with_peers  # reads the environment; no mpi4py import

        if under_mpi_with_peers():
            return "mpi"
        if argv_hostfile() or os.environ.get(ENV_HOSTFILE):  # --dtmTCPhosts=FILE, --hostfile
            return "tcp"
        return "local"
    if name not in names:
        raise ValueError(f"unknown transport {transport!r}; expected {choices}")
    return names[name]


def _on_worker_lost(node: Node, pool: Any, rank: int) -> None:
    if node.closed or node.stopping:
        return
    describe = getattr(pool, "describe", None)
    who = describe(rank) if describe is not None else f"worker rank {rank}"
    replace = getattr(pool, "replace", None)
    if replace is not None and rank in node.workers:
        new = replace(rank, list(node.workers), node.call_soon, node.add_worker, node.on_initfail)
        if new is not None:
            node.joining.add(new)
            node.replacements.add(new)
            log.warning("%s died; its tasks go to the other workers, and rank %d replaces it", who, new)
        else:
            log.warning("%s died; its tasks go to the other workers", who)
    else:
        log.warning("%s died; its tasks go to the other workers", who)
    node.worker_lost(rank, who)


#: pools not torn down yet, by id(node): drained at interpreter exit
_active: dict[int, tuple[Node, Any]] = {}


def _drain(node: Node) -> None:
    """Wait until every top-level task has settled (or the pool broke or stopped)."""
    hub = node.hub
    assert hub is not None
    with hub.lock:
        while hub.outstanding > 0 and node.broken is None and not node.closed:
            hub.all_done.wait(0.5)


def _drain_in_background(node: Node, pool: Any) -> None:
    def run() -> None:
        _drain(node)
        _teardown(node, pool)

    threading.Thread(target=run, name="dtm-drain", daemon=True).start()


#: one lock per node: teardowns of the same pool (``shutdown(wait=False)`` then ``shutdown()``,
#: a drain at exit) run one after the other, so nothing is closed twice (a file descriptor closed
#: twice may by then belong to someone else), and the later caller returns once all is stopped
_teardown_locks: "weakref.WeakKeyDictionary[Node, threading.Lock]" = weakref.WeakKeyDictionary()
_teardown_locks_guard = threading.Lock()


def _teardown(node: Node, pool: Any, grace: float = 5.0, report_timeout: float = 0.0) -> dict[int, Any] | None:
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
            node.send(w, (SHUTDOWN,))
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


def _nested_handle(worker: _runtime.Worker) -> DTMExecutor:
    h = getattr(worker, "_handle", None)
    if h is None:
        h = object.__new__(DTMExecutor)
        h._nested = True
        h._worker = worker  # type: ignore[attr-defined]
        h._node = worker.node
        h._max_workers = len(worker.node.workers)
        h._shutdown = False
        worker._handle = h  # type: ignore[attr-defined]
    return h


def current_executor() -> DTMExecutor:
    """The executor to use for nested work: the running worker's inside a task, else the most
    recently created live `DTMExecutor` of this process."""
    w = executing_worker()
    if w is not None:
        return _nested_handle(w)
    ref = _last_created[0] if _last_created else None
    ex = ref() if ref is not None else None
    if ex is None or ex._shutdown:
        raise RuntimeError("no DTMExecutor is running in this process (and this is not a task)")
    return ex


def _at_exit() -> None:
    import sys

    _interpreter_exiting[0] = True
    last = getattr(sys, "last_exc", None) or getattr(sys, "last_value", None)
    interrupted = isinstance(last, KeyboardInterrupt)  # the program died of Ctrl-C
    for node, pool in list(_active.values()):
        try:
            if interrupted:
                node._fail_all(BrokenDTMExecutor("the program was interrupted (KeyboardInterrupt)"))
                _teardown(node, pool, grace=0.0)
            else:  # like the stdlib: finish submitted work first
                _drain(node)
                _teardown(node, pool)
        except Exception:  # noqa: BLE001
            pass


atexit.register(_at_exit)

"""`DTMExecutor`, the public face of a run: it owns the run (its scheduler node with the hub, and
the pool of workers its transport started) from creation to shutdown. Inside a task the same
interface is `_NestedExecutor`, the worker's own handle, which owns nothing.

The executor layer: imports the DTM layer (`_control`, `_options`), the transports' registry,
`_lifecycle`, the scheduler and the leaves; only the entry points import it.
"""

from __future__ import annotations

import functools
import logging
import operator
import os
import pickle
import sys
import threading
import weakref
from concurrent.futures import Executor, Future
from typing import Any, Callable, Iterable, Iterator, Mapping, TypeVar

from . import _control, _lifecycle, _map, _options, _progress, _report, _serial, _transports
from ._control import AsyncResult, ControlMixin
from ._errors import BrokenDTMExecutor
from ._futures import executing_worker
from ._hostfile import ENV_HOSTFILE, argv_hostfile
from ._scheduler import Hub, Kind, Node, TaskKind
from ._transports import worker
from ._transports.base import Pool, WorkerStart
from ._transports.mpi import under_mpi_with_peers

log = logging.getLogger("dtm_executor")

T = TypeVar("T")

_default_workers: list[int] = []


def set_default_workers(n: int) -> None:
    """``DTMExecutor(max_workers=None)`` starts ``n`` workers (the launcher's ``-n N``)."""
    _default_workers[:] = [n]


def _usable_cpus() -> int:
    if _default_workers:
        return _default_workers[0]
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
        processes), ``"local"``, ``"mpi"``, ``"tcp"``, ``"memory"`` (workers as threads of this
        process, for tests) or a transport added with `register_transport`; any case.
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

    _show_progress = False

    def __new__(cls, *args: Any, **kwargs: Any) -> "DTMExecutor":
        w = executing_worker()
        if w is not None:
            return _NestedExecutor.of(w)
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
        if worker.booting():
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
        entry = _transports.find(kind)
        assert entry is not None
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
        opts = {"max_threads": max_threads, "trace": trace_dir is not None, "max_retries": max_retries,
                "task_granularity": dtm_options.task_granularity}
        self._opts = opts  # kept: replacements start with it, and setOptions updates it
        self._print_summary = bool(print_summary)
        self._show_progress = bool(progress)  # a bar (tqdm) or log lines per map: see _progress
        self._trace_dir = None if trace_dir is None else os.fspath(trace_dir)
        self._pool = _transports.factory(entry)(max_workers, WorkerStart(opts, init_blob), pool_options)
        _options.warn_unknown(pool_options)  # left by a pool registered elsewhere: named
        node = Node(self._pool.transport, hub=True, worker=self._pool.local_worker,
                    workers=list(self._pool.workers), max_threads=max_threads)
        self._max_workers = len(self._pool.workers)
        self._node = node
        assert node.hub is not None
        self._hub: Hub = node.hub
        node.on_lost = functools.partial(_on_worker_lost, node, self._pool)  # no ref to self
        node.max_retries = max_retries
        node.task_granularity = dtm_options.task_granularity
        node.on_start_failed = getattr(self._pool, "stop_replacing", None)
        if trace_dir is not None:
            node.trace = []
        node.start()
        _lifecycle.started(self, node, self._pool)
        # Dropped without shutdown: finish the submitted work, then stop (as the stdlib does).
        self._finalizer = weakref.finalize(self, _lifecycle.drain_in_background, node, self._pool)
        self._finalizer.atexit = False  # _lifecycle.at_exit drains every active pool itself

    def _share_options(self, changes: dict[str, Any]) -> None:
        """Options that workers act on (maps inside tasks) reach every rank, and replacements."""
        self._opts.update(changes)
        self._node.task_granularity = self._opts.get("task_granularity")
        for w in list(self._node.workers):
            if w != self._node.rank:
                self._node.send(w, (int(Kind.OPTIONS), dict(changes)))

    # -- Executor interface --------------------------------------------------------------
    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Schedule ``fn(*args, **kwargs)`` and return a `concurrent.futures.Future` of its result.

        Inside a task the child goes to this worker's local queue: waiting on it runs it inline
        if it is still queued, else lends the worker to other work. ``fn`` travels by reference
        when it can (a module-level function), by value otherwise (lambdas, closures). A
        failure is raised again by ``result()`` with the worker's traceback as its
        ``__cause__`` (a `RemoteTraceback`)."""
        self._check_open()
        task, fut = self._hub.make_task(fn, (args, kwargs), TaskKind.CALL)
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
        self._check_open()
        return _map.chunked_map(
            functools.partial(self._submit_chunk, pin=[]), fn, iterables, timeout, chunksize,
            self._nworkers(), self._granularity,
            progress=_progress.start if self._show_progress else None, buffersize=buffersize,
        )

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._shutdown_lock:
            already = self._shutdown
            self._shutdown = True
        _lifecycle.shut_down(self)
        if cancel_futures:
            self._hub.cancel_pending()
        if already and not wait:
            return
        if wait:
            self._wait_and_close()
        else:
            threading.Thread(target=self._wait_and_close, name="dtm-shutdown", daemon=True).start()

    def __exit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> bool | None:
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            self._terminate("interrupted (KeyboardInterrupt)")  # Ctrl-C: stop now, do not drain
            return None
        return super().__exit__(exc_type, exc_val, exc_tb)

    def _terminate(self, why: str) -> None:
        with self._shutdown_lock:
            self._shutdown = True
        _lifecycle.shut_down(self)
        self._hub.cancel_pending()
        _lifecycle.fail(self._node, BrokenDTMExecutor(f"the executor was stopped: {why}"))
        _lifecycle.teardown(self._node, self._pool, grace=0.0)

    def __reduce__(self) -> tuple[Any, ...]:
        return (current_executor, ())

    # -- internals -----------------------------------------------------------------------
    @property
    def max_workers(self) -> int:
        """The number of workers (ranks that run tasks)."""
        return self._max_workers

    def _nworkers(self) -> int:
        return self._max_workers

    def _check_open(self) -> None:
        if self._node.broken is not None:
            raise BrokenDTMExecutor(str(self._node.broken))
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        if _lifecycle.exiting():
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")

    def _submit_chunk(
        self, fn: Callable[..., Any], items: list[Any], star: bool, pin: list[Any] | None = None
    ) -> Future[Any]:
        """``pin``: one list per map call, so that all its chunks carry ``fn`` as pickled with the
        first one, at the call (not as it is when a later chunk is submitted)."""
        task, fut = self._hub.make_task(fn, ((items, star), {}), TaskKind.CHUNK, pin[0] if pin else None)
        if pin is not None and not pin:
            pin.append((task.fid, task.fnblob))
        self._hub.submit(task)
        return fut

    def _wait_and_close(self) -> None:
        _lifecycle.drain(self._node)
        want_reports = self._print_summary or self._trace_dir is not None
        reports = _lifecycle.teardown(self._node, self._pool, report_timeout=30.0 if want_reports else 0.0)
        if reports is not None and want_reports:
            self._emit_reports(reports)

    def _emit_reports(self, reports: dict[int, Any]) -> None:
        if self._print_summary:
            sys.stdout.write(_report.format_summary(reports) + "\n")
            sys.stdout.flush()
        if self._trace_dir is not None:
            files = _report.write_trace(self._trace_dir, reports)
            log.info("trace written: %s", ", ".join(files))


class _NestedExecutor(DTMExecutor):
    """The executor as a task sees it (``DTMExecutor()`` or `current_executor` inside a task, or
    a `DTMExecutor` unpickled there): the handle of the worker running the task. Work goes to
    that worker's own queue and is balanced from there; it never draws progress bars, and
    ``shutdown`` does nothing (the run belongs to the program that started it)."""

    _worker: Any  # the scheduler's Worker of this process's rank

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """``DTMExecutor(...)`` inside a task returns the handle: its arguments are not used."""

    @classmethod
    def of(cls, w: Any) -> _NestedExecutor:
        """The handle of worker ``w`` (the same one while anybody holds it)."""
        with _handles_lock:
            h = _handles.get(id(w))
            if h is None or h._worker is not w:
                h = object.__new__(cls)
                h._worker = w
                h._node = w.node
                h._max_workers = len(w.node.workers)
                h._shutdown = False
                _handles[id(w)] = h
            return h

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        return self._worker.submit(fn, args, kwargs)  # type: ignore[no-any-return]

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        return None

    def __exit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> bool | None:
        return None

    def setOptions(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError(
            "setOptions() cannot be called inside a task: set the options of the executor in "
            "the program that created it"
        )

    def _nworkers(self) -> int:
        return max(1, len(self._node.workers))

    @property
    def _granularity(self) -> float:  # type: ignore[override]
        """The owner's ``task_granularity`` (sent to every rank), else this process's
        ``dtm.setOptions``."""
        g = self._node.task_granularity
        return g if g is not None else _options.global_granularity()

    @_granularity.setter
    def _granularity(self, value: float | None) -> None:
        raise RuntimeError("a task cannot change task_granularity")

    def _check_open(self) -> None:
        return None  # the run is open while its tasks run

    def _submit_chunk(
        self, fn: Callable[..., Any], items: list[Any], star: bool, pin: list[Any] | None = None
    ) -> Future[Any]:
        return self._worker.submit(fn, (items, star), {}, kind=TaskKind.CHUNK)  # type: ignore[no-any-return]

    def _map_async(self, fn: Callable[..., Any], cols: tuple[list[Any], ...], granularity: float) -> AsyncResult:
        return _control.map_async_in_task(self, fn, cols, granularity)


_handles: "weakref.WeakValueDictionary[int, _NestedExecutor]" = weakref.WeakValueDictionary()
_handles_lock = threading.Lock()
_lifecycle.set_nested_handle(_NestedExecutor.of)


def _choose_transport(transport: str, options: Mapping[str, Any] | None = None) -> str:
    """The name of a registered transport (names are case-insensitive). ``"auto"``:
    ``$DTM_EXECUTOR_TRANSPORT`` if set (the launcher's ``--transport``), else TCP when hosts are
    given (``hostfile=``/``hosts=`` in ``options``, as the launcher's ``--hostfile``, or the
    legacy ``--dtmTCPhosts``), else MPI when started by an MPI launcher with more than one rank,
    else local worker processes."""
    if not isinstance(transport, str):
        raise TypeError(f"transport must be a string such as 'local' or 'tcp', not {transport!r}")
    name = transport.strip().lower()
    hosts = [k for k in ("hostfile", "hosts") if options and options.get(k) is not None]
    if name == "auto":
        raw = os.environ.get("DTM_EXECUTOR_TRANSPORT", "")
        env = raw.strip().lower()
        if env and env != "auto":
            entry = _transports.find(env)
            if entry is None:
                raise ValueError(f"DTM_EXECUTOR_TRANSPORT={raw!r} is not a transport: expected {_choices()}")
            if hosts and entry.name != "tcp":
                raise ValueError(
                    f"{hosts[0]}= asks for the 'tcp' transport, but DTM_EXECUTOR_TRANSPORT={raw!r} "
                    f"selects {entry.name!r}"
                )
            return entry.name
        if hosts:
            return "tcp"
        if under_mpi_with_peers():  # reads the environment; no mpi4py import
            return "mpi"
        if argv_hostfile() or os.environ.get(ENV_HOSTFILE):  # --dtmTCPhosts=FILE, --hostfile
            return "tcp"
        return "local"
    entry = _transports.find(name) if name else None
    if entry is None:
        raise ValueError(f"unknown transport {transport!r}; expected {_choices()}")
    return entry.name


def _choices() -> str:
    return f"one of {_transports.names(entry_points=True)} or 'auto'"


def _on_worker_lost(node: Node, pool: Pool, rank: int) -> None:
    """A worker is gone (communication thread of rank 0): replace it if the pool can, then
    re-run or fail what it held."""
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


def current_executor() -> DTMExecutor:
    """The executor to use for nested work: the running worker's inside a task, else the most
    recently created live `DTMExecutor` of this process."""
    ex: DTMExecutor = _lifecycle.current_executor()
    return ex

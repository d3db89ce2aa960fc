"""DEAP DTM's Control API, for programs written for ``from deap import dtm``.

Change that import to ``from dtm_executor import dtm`` and the program runs unchanged::

    from dtm_executor import dtm

    def op(x):
        return x + 1.0 / x

    def main():
        return dtm.map(op, range(1, 1000))

    dtm.start(main)

``dtm.start(main)`` starts a `DTMExecutor` with the options given to ``dtm.setOptions`` (local
worker processes unless a communication manager says otherwise), runs ``main`` in the calling
thread as the root task, shuts the executor down and returns what ``main`` returned. Worker
processes import the main script as multiprocessing's *spawn* does; there ``dtm.start`` returns
None at once, so the unguarded ``dtm.start(main)`` of DTM programs is fine.

Every other function works in the root task and inside tasks at any depth, on the executor of
the worker running the task. Outside ``dtm.start`` they use the most recently created live
`DTMExecutor`, so DTM-style code also runs inside ``with DTMExecutor() as ex:``.

An entry point: built on the executor and the DTM layer.
"""

from __future__ import annotations

import os
import threading
import warnings
from concurrent.futures import Future
from typing import Any, Callable, Iterable, Iterator, Sequence

from . import _control, _lifecycle, _options, _transports
from ._control import AsyncResult
from ._executor import DTMExecutor, current_executor
from ._futures import executing_worker
from ._options import DTMOptionWarning
from ._transports import worker

__all__ = [
    "AsyncResult",
    "DTMOptionWarning",
    "apply",
    "apply_async",
    "filter",
    "getWorkerId",
    "imap",
    "imap_unordered",
    "map",
    "map_async",
    "repeat",
    "setOptions",
    "start",
    "testAll",
    "testAny",
    "waitAll",
    "waitAny",
]

_state_lock = threading.Lock()
_running: list[Any] = [None]  # the executor of the dtm.start in progress (or _STARTING)
_STARTING = object()

#: Environment variables that say this process was started by an MPI launcher.
_MPI_LAUNCHER_VARS = ("PMI_RANK", "PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")


def _executor() -> DTMExecutor:
    if executing_worker() is not None:
        return current_executor()
    ex = _running[0]
    if isinstance(ex, DTMExecutor) and not _lifecycle.is_shut_down(ex):
        return ex
    try:
        return current_executor()
    except RuntimeError:
        raise RuntimeError(
            "dtm: no executor is running; call dtm.start(main) (or create a DTMExecutor) first"
        ) from None


def _root() -> DTMExecutor | None:
    """Whose root task ``waitAll()`` & co. without a list mean outside tasks (inside a task,
    the task's own requests are meant and this is not used); None when no executor runs."""
    if executing_worker() is not None:
        return None
    try:
        return _executor()
    except RuntimeError:
        return None


# -- options and start ------------------------------------------------------------------------
def setOptions(*args: Any, **kwargs: Any) -> None:
    """Set DTM global options before `start`: ``communicationManager``, ``loadBalancer``,
    ``printSummary``, ``setTraceMode``, ``traceDir``, ``taskGranularity`` (or their Python-style
    names, and `DTMExecutor` arguments such as ``max_workers``). May be called several times.
    A wrong value raises ``ValueError`` here; an unknown name is a warning when `start` runs."""
    in_worker = worker.booting() or executing_worker() is not None
    if _running[0] is not None and not in_worker:
        warnings.warn(
            "dtm.setOptions() was called after dtm.start(); the options are not considered",
            DTMOptionWarning, stacklevel=2,
        )
        return
    _options.set_global(args, kwargs)


def _under_mpi_launcher() -> bool:
    return any(v in os.environ for v in _MPI_LAUNCHER_VARS)


def _pick_transport(transport: str | None) -> str:
    if transport is None or transport == "auto":
        return "auto"
    if _transports.find(transport) is not None:
        return transport
    if transport == "mpi" and _under_mpi_launcher():
        raise RuntimeError(
            "communicationManager 'deap.dtm.mpi4py' asks for the MPI transport, which is not "
            "available in this installation; refusing to start one local pool per MPI rank"
        )
    warnings.warn(
        f"communication manager for transport {transport!r} is not available here; "
        "running with local worker processes instead",
        DTMOptionWarning, stacklevel=4,
    )
    return "auto"


def _make_executor() -> DTMExecutor:
    opts = _options.global_options()
    transport = opts.pop("transport", None)
    trace_mode = opts.pop("trace_mode", False)
    trace_dir = opts.pop("trace_dir", None)
    print_summary = opts.pop("print_summary", False)
    opts.pop("load_balancer", None)  # only DTM's default exists; work stealing is ours
    granularity = opts.pop("task_granularity", None)
    # DTMExecutor arguments and the transports' own options; as in DTM, an unknown name has no
    # effect (a warning here, where DTMExecutor() would raise TypeError)
    unknown = [k for k in opts if not _options.known_keyword(k)]
    _options.warn_unknown(unknown, "dtm.setOptions()", stacklevel=4)  # at dtm.start's caller
    kwargs: dict[str, Any] = {k: v for k, v in opts.items() if k not in unknown}
    if trace_mode:
        kwargs["trace_dir"] = trace_dir or _options.DEFAULT_TRACE_DIR
    elif trace_dir is not None:
        warnings.warn("traceDir has no effect without setTraceMode=True", DTMOptionWarning, stacklevel=3)
    if print_summary:
        kwargs["print_summary"] = True
    if granularity is not None:
        kwargs["task_granularity"] = granularity
    return DTMExecutor(transport=_pick_transport(transport), **kwargs)


def start(initialTarget: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ``initialTarget(*args, **kwargs)`` as the root task of a new run and return its
    result (its exception propagates, after the run has stopped).

    In a worker process importing the main script it returns None at once (workers wait for
    tasks instead). Call it from the main program, once per run; not inside a task.
    """
    if worker.booting():
        return None
    if executing_worker() is not None:
        raise RuntimeError("dtm.start() cannot be called inside a task; call the function instead")
    if not callable(initialTarget):
        raise TypeError(f"dtm.start() needs a callable target, not {initialTarget!r}")
    with _state_lock:
        if _running[0] is not None:
            raise RuntimeError("dtm.start() is already running in this process")
        _running[0] = _STARTING
    try:
        ex = _make_executor()
    except BaseException:
        _running[0] = None
        raise
    _running[0] = ex
    try:
        result = initialTarget(*args, **kwargs)
    except BaseException as e:
        _running[0] = None
        if isinstance(e, KeyboardInterrupt):
            ex.__exit__(type(e), e, e.__traceback__)  # stop the workers now, do not drain
        else:
            ex.shutdown(wait=True, cancel_futures=True)
        raise
    _running[0] = None
    # the root task is over: as in DTM, requests nobody waited for are abandoned (queued ones
    # are cancelled; running ones finish)
    ex.shutdown(wait=True, cancel_futures=True)
    return result


# -- the Control API --------------------------------------------------------------------------
def map(function: Callable[..., Any], *iterables: Iterable[Any], **kwargs: Any) -> list[Any]:
    """Parallel ``map`` returning a list (blocks). Iterables are cut to the shortest; keyword
    arguments go to ``function``. Short calls are batched (``taskGranularity``, and at least
    ~10 ms per task automatically)."""
    return _executor()._dtm_map(function, *iterables, **kwargs)


def map_async(function: Callable[..., Any], *iterables: Iterable[Any], **kwargs: Any) -> AsyncResult:
    """`map` without waiting: an `AsyncResult` whose ``get()`` is the list."""
    return _executor().map_async(function, *iterables, **kwargs)


def apply(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ``function(*args, **kwargs)`` as one task and return its result (blocks)."""
    return _executor().apply(function, *args, **kwargs)


def apply_async(function: Callable[..., Any], *args: Any, **kwargs: Any) -> AsyncResult:
    """`apply` without waiting: an `AsyncResult`."""
    return _executor().apply_async(function, *args, **kwargs)


def imap(function: Callable[..., Any], *iterables: Iterable[Any], chunksize: int | None = None) -> Iterator[Any]:
    """Ordered results, each yielded as soon as it (and those before it) are ready."""
    return _executor().imap(function, *iterables, chunksize=chunksize)


def imap_unordered(function: Callable[..., Any], iterable: Iterable[Any], chunksize: int = 1) -> Iterator[Any]:
    """Results in completion order, ``chunksize`` tasks in flight at a time."""
    return _executor().imap_unordered(function, iterable, chunksize)


def filter(function: Callable[..., Any], iterable: Iterable[Any]) -> list[Any]:
    """Items for which ``function(item)`` is true (computed in parallel, filtered here)."""
    return _executor().filter(function, iterable)


def repeat(function: Callable[..., Any], n: int, *args: Any, **kwargs: Any) -> list[Any]:
    """The list of ``n`` results of ``function(*args, **kwargs)``, computed in parallel."""
    return _executor().repeat(function, n, *args, **kwargs)


def waitAll(reqList: Sequence[Future[Any]] | None = None) -> None:
    """Wait for every request of ``reqList`` (default: the current task's pending ones)."""
    _control.wait_all(reqList, _root())


def waitAny(reqList: Sequence[Future[Any]] | None = None) -> Future[Any] | None:
    """Wait for one pending request of ``reqList`` (default: the current task's), then return
    the last finished one (None if none has finished)."""
    return _control.wait_any(reqList, _root())


def testAll(reqList: Sequence[Future[Any]] | None = None) -> bool:
    """Whether all requests of ``reqList`` (default: the current task's) are ready."""
    return _control.test_all(reqList, _root())


def testAny(reqList: Sequence[Future[Any]] | None = None) -> Future[Any] | None:
    """The last finished request of ``reqList`` (default: the current task's), or None."""
    return _control.test_any(reqList, _root())


def getWorkerId() -> int:
    """Rank of the worker running the current task; 0 in the root task."""
    return _control.current_worker_id()


#: The name used in a comment of DTM's guide (``asyncReturn.wait()  # or dtm.waitForAll()``).
waitForAll = waitAll

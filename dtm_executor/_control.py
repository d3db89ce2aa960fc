"""DTM's Control API (``apply``, ``map_async``, ``waitAny``...) as methods of `DTMExecutor`.

Everything here is built on the executor's ``submit`` and chunked map, so it behaves the same in
the root program and inside tasks at any depth: there, waits help (they run the awaited children
inline or lend the worker to other work) because the futures are `DTMFuture` objects.

DTM tracked the asynchronous requests of each task so that ``waitAll()``/``waitAny()`` without a
list mean "this task's pending requests". We keep that per task: the ``AsyncResult`` objects created
by the task running on this thread; outside tasks, by the root task of the executor they were made
on (the program that owns it, one bookkeeping per thread of it).

The DTM layer: imports `_options`, `_lifecycle` (for `current_executor` inside tasks) and the
leaves; `DTMExecutor` mixes it in.
"""

from __future__ import annotations

import collections
import functools
import threading
import warnings
from concurrent import futures
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

from . import _lifecycle, _map, _options, _progress
from ._futures import SEQ, DTMFuture, cancel_future, executing_worker, tls


class AsyncResult(DTMFuture):
    """The result of ``apply_async``/``map_async``: DTM's ``AsyncResult`` and a real
    `concurrent.futures.Future` (so ``concurrent.futures.wait``/``as_completed`` accept it).

    Waiting on it inside a task keeps the worker busy, as for any future of this package.
    """

    def __init__(self) -> None:
        super().__init__()
        self._dtm_sources: tuple[Future[Any], ...] = ()

    # -- DTM's interface ---------------------------------------------------------------
    def get(self, timeout: float | None = None) -> Any:
        """The result; re-raises the task's exception. Blocks (helping, inside tasks)."""
        return self.result(timeout)

    def ready(self) -> bool:
        """Whether the request has completed (successfully or not)."""
        return self.done()

    def successful(self) -> bool:
        """Whether it completed without raising; ``AssertionError`` if not ready yet (as DTM)."""
        if not self.done():
            raise AssertionError("AsyncResult.successful() was called before the result was ready")
        return not self.cancelled() and self.exception() is None

    def wait(self, timeout: float | None = None) -> None:
        """Wait until ready (or ``timeout`` seconds). Afterwards ``ready()`` is true unless it
        timed out."""
        futures.wait([self], timeout)

    # -- Future plumbing ---------------------------------------------------------------
    def cancel(self) -> bool:
        if self._dtm_sources:
            for src in self._dtm_sources:
                cancel_future(src)  # settles this one through _copy_from if it worked
            return self.cancelled()
        return super().cancel()

    def running(self) -> bool:
        if self._dtm_sources and not self.done():
            return any(s.running() for s in self._dtm_sources)
        return super().running()

    @classmethod
    def _chain(cls, src: Future[Any]) -> "AsyncResult":
        """An AsyncResult settled like ``src``; waiting on it can run ``src``'s task inline."""
        ar = cls()
        ar._dtm_task = getattr(src, "_dtm_task", None)
        ar._dtm_sources = (src,)
        src.add_done_callback(ar._copy_from)
        return ar

    def _copy_from(self, src: Future[Any]) -> None:
        self._dtm_seq = next(SEQ)  # settled now (the Future methods below do not stamp)
        if src.cancelled():
            Future.cancel(self)
            self.set_running_or_notify_cancel()  # wakes concurrent.futures.wait on us
            return
        exc = src.exception()
        if exc is not None:
            Future.set_exception(self, exc)
        else:
            Future.set_result(self, src.result())

    def __repr__(self) -> str:
        return super().__repr__().replace("DTMFuture", "AsyncResult", 1)


def _seq(f: Future[Any]) -> int:
    """When ``f`` settled, in this process's order. Ours are stamped as they settle; a future of
    another kind is stamped by a callback once seen pending (`_watch`), and one that was done
    before we ever saw it counts as older than every stamped one."""
    return getattr(f, "_dtm_seq", 0)


def _stamp(f: Future[Any]) -> None:
    f._dtm_seq = next(SEQ)  # type: ignore[attr-defined]


def _watch(fs: Iterable[Future[Any]]) -> None:
    for f in fs:
        if not isinstance(f, DTMFuture) and not hasattr(f, "_dtm_seq"):
            f._dtm_seq = 0  # type: ignore[attr-defined]
            if not f.done():
                f.add_done_callback(_stamp)


def _last_finished(fs: Iterable[Future[Any]]) -> Future[Any] | None:
    best = None
    for f in fs:
        if f.done() and (best is None or _seq(f) > _seq(best)):
            best = f
    return best


# -- per-task bookkeeping of asynchronous requests ------------------------------------------
class _Requests:
    """The asynchronous requests of one task: those still pending, and the last that finished."""

    __slots__ = ("pending", "last", "_mark")

    def __init__(self) -> None:
        self.pending: list[AsyncResult] = []
        self.last: AsyncResult | None = None
        self._mark = 64

    def add(self, ar: AsyncResult) -> None:
        self.pending.append(ar)
        if len(self.pending) >= self._mark:  # amortized pruning of finished ones
            self.refresh()
            self._mark = max(64, 2 * len(self.pending))

    def refresh(self) -> None:
        still = []
        for r in self.pending:
            if r.done():
                if self.last is None or _seq(r) > _seq(self.last):
                    self.last = r
            else:
                still.append(r)
        self.pending = still


_local = threading.local()


def _requests(owner: Any = None) -> _Requests:
    """The bookkeeping of the task running on this thread (inline children are tasks of their
    own), or, when it runs no task, of the root task of ``owner`` (the executor the request
    was made on, or that ``dtm`` uses): each executor's program is a root task of its own, so
    a new executor never sees the requests of an earlier one. None: no executor, no requests."""
    stack = getattr(tls, "tasks", None)
    if stack:
        table: dict[int, tuple[Any, _Requests]] | None = getattr(_local, "by_task", None)
        if table is None:
            table = _local.by_task = {}
        task = stack[-1]
        entry = table.get(id(task))
        if entry is None or entry[0] is not task:
            live = {id(t) for t in stack}  # a task that left this thread's stack has ended
            for key in [k for k in table if k not in live]:
                del table[key]
            entry = table[id(task)] = (task, _Requests())
        return entry[1]
    if owner is None:
        return _Requests()
    # per executor and per thread: the program's threads do not share a root task (DTM's
    # Control API belongs to the thread running the task)
    roots = owner.__dict__.get("_dtm_roots")
    if roots is None:
        roots = owner.__dict__.setdefault("_dtm_roots", threading.local())
    reqs: _Requests | None = getattr(roots, "requests", None)
    if reqs is None:
        reqs = roots.requests = _Requests()
    return reqs


def _candidates(reqList: Sequence[Future[Any]] | None, owner: Any) -> list[Future[Any]]:
    """The requests to consider: ``reqList``, else the current task's pending ones and the last
    that finished."""
    if reqList:
        fs = list(reqList)
        _watch(fs)
        return fs
    reqs = _requests(owner)
    reqs.refresh()
    out: list[Future[Any]] = list(reqs.pending)
    if reqs.last is not None:
        out.append(reqs.last)
    return out


# -- helpers that run in tasks ----------------------------------------------------------------
class _Named:
    """A per-item callable that carries the name of the function it calls (task labels and run
    summaries then name the user's function, not this wrapper)."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        for attr in ("__module__", "__name__", "__qualname__"):
            value = getattr(fn, attr, None)
            if isinstance(value, str):
                self.__dict__[attr] = value


class _Repeat(_Named):
    """``repeat``'s per-item function: ignores the item (its index) and calls ``fn(*args, **kw)``."""

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        super().__init__(fn)
        self.args, self.kwargs = args, kwargs

    def __call__(self, _index: int) -> Any:
        return self.fn(*self.args, **self.kwargs)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_Repeat, (self.fn, self.args, self.kwargs))


class _WithKwargs(_Named):
    """``fn`` with DTM's extra keyword arguments of ``map``/``map_async``."""

    def __init__(self, fn: Callable[..., Any], kwargs: dict[str, Any]) -> None:
        super().__init__(fn)
        self.kwargs = kwargs

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args, **self.kwargs)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_WithKwargs, (self.fn, self.kwargs))


def _with_kwargs(fn: Callable[..., Any], kwargs: dict[str, Any]) -> Callable[..., Any]:
    return _WithKwargs(fn, kwargs) if kwargs else fn


def _columns(iterables: tuple[Iterable[Any], ...]) -> tuple[list[Any], ...]:
    """Snapshot the iterables now, shortest first (as DTM did: ``zip(*iterables)``)."""
    if len(iterables) == 1:
        return (list(iterables[0]),)
    rows = list(zip(*iterables))
    if not rows:
        return tuple([] for _ in iterables)
    return tuple(list(c) for c in zip(*rows))


def _map_in_task(fn: Callable[..., Any], cols: tuple[list[Any], ...], granularity: float) -> list[Any]:
    """``map_async`` started inside a task: this child task runs the map (and its wait helps)."""
    return list(_lifecycle.current_executor()._dtm_chunked(fn, cols, granularity))


def map_async_in_task(executor: Any, fn: Callable[..., Any], cols: tuple[list[Any], ...],
                      granularity: float) -> AsyncResult:
    """``map_async`` inside a task: a child task runs the map. It starts when stolen by an idle
    worker or when this task waits (then inline), like any child."""
    return AsyncResult._chain(executor.submit(_map_in_task, fn, cols, granularity))


def _drain(ar: AsyncResult, results: Iterator[Any]) -> None:
    try:
        values = list(results)
    except BaseException as e:  # noqa: BLE001 - delivered through the AsyncResult
        ar.set_exception(e)
    else:
        ar.set_result(values)


if TYPE_CHECKING:  # what the mixin needs from DTMExecutor
    _Base = Any
else:
    _Base = object


class ControlMixin(_Base):
    """DTM's Control methods for `DTMExecutor` (``map`` keeps the `Executor` meaning there; the
    list-returning DTM ``map`` is ``dtm.map``)."""

    # -- task granularity --------------------------------------------------------------
    @property
    def _granularity(self) -> float:
        """``task_granularity`` of this executor, else ``dtm.setOptions``'s of this process."""
        g = self.__dict__.get("_dtm_granularity")
        return g if g is not None else _options.global_granularity()

    @_granularity.setter
    def _granularity(self, value: float | None) -> None:
        self.__dict__["_dtm_granularity"] = value

    def _share_options(self, changes: dict[str, Any]) -> None:
        """Send options the workers act on to every rank (the owning executor does)."""

    def _dtm_chunked(
        self, fn: Callable[..., Any], iterables: Sequence[Iterable[Any]], granularity: float,
        chunksize: int | None = None,
    ) -> Iterator[Any]:
        self._check_open()
        return _map.chunked_map(
            functools.partial(self._submit_chunk, pin=[]), fn, tuple(iterables), None, chunksize,
            self._nworkers(), granularity,
            progress=_progress.start if self._show_progress else None,
        )

    def _dtm_map(self, function: Callable[..., Any], /, *iterables: Iterable[Any], **kwargs: Any) -> list[Any]:
        """DTM's ``map``: a list; keyword arguments go to ``function``."""
        if not iterables:
            raise TypeError("map() needs at least one iterable")
        return list(self._dtm_chunked(_with_kwargs(function, kwargs), iterables, self._granularity))

    # -- beyond DTM: as in mpi4py.futures and multiprocessing ---------------------------
    def starmap(
        self,
        fn: Callable[..., Any],
        iterable: Iterable[Iterable[Any]],
        timeout: float | None = None,
        chunksize: int | None = None,
        buffersize: int | None = None,
    ) -> Iterator[Any]:
        """``fn(*args)`` for each ``args`` of ``iterable``, as an iterator of results in order:
        `map` for arguments already grouped (``itertools.starmap``, mpi4py.futures'
        ``starmap``), with `map`'s lazy input, ``timeout``, ``chunksize`` and ``buffersize``."""
        self._check_open()
        return _map.chunked_map(
            self._submit_chunk, fn, (iterable,), timeout, chunksize, self._nworkers(),
            self._granularity, progress=_progress.start if self._show_progress else None,
            buffersize=buffersize, starred=True,
        )

    # -- DTM's Control API -------------------------------------------------------------
    def setOptions(self, *args: Any, **kwargs: Any) -> None:
        """DTM's ``setOptions``, for this executor: ``taskGranularity``, ``printSummary``,
        ``loadBalancer`` (only ``"PDB"``), ``communicationManager`` (naming this executor's
        transport), ``setTraceMode``/``traceDir`` (for an executor created with ``trace_dir=``:
        its workers decide whether to record when they start), in DTM's spelling or Python's,
        and ``progress``. Call it before the work it should affect, in the program that owns the
        executor. A wrong value, or an option fixed when the executor was created
        (``max_workers``, the transport's), is a ``ValueError`` and changes nothing; an unknown
        name is a `DTMOptionWarning` (DTM ignored those silently). Not inside a task (a
        ``RuntimeError``)."""
        if self._shutdown:
            warnings.warn("setOptions() was called after shutdown(); the options are not considered",
                          _options.DTMOptionWarning, stacklevel=2)
            return
        tracing = self._node.trace is not None
        changes = _options.changes_for_executor(args, kwargs, self._kind, tracing, stacklevel=3)
        if "task_granularity" in changes:
            self._granularity = changes["task_granularity"]
            self._share_options({"task_granularity": changes["task_granularity"]})
        if "print_summary" in changes:
            self._print_summary = changes["print_summary"]
        if "progress" in changes:
            self._show_progress = changes["progress"]
        if "trace_dir" in changes:
            self._trace_dir = changes["trace_dir"]

    def apply(self, function: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run ``function(*args, **kwargs)`` as a task and return its result (blocks)."""
        return self.submit(function, *args, **kwargs).result()

    def apply_async(self, function: Callable[..., Any], /, *args: Any, **kwargs: Any) -> AsyncResult:
        """Like `apply`, without waiting: returns an `AsyncResult`."""
        ar = AsyncResult._chain(self.submit(function, *args, **kwargs))
        _requests(self).add(ar)
        return ar

    def map_async(self, function: Callable[..., Any], /, *iterables: Iterable[Any], **kwargs: Any) -> AsyncResult:
        """DTM's ``map`` without waiting: an `AsyncResult` whose ``get()`` is the list of results.
        The iterables are read now (shortest one wins); keyword arguments go to ``function``."""
        if not iterables:
            raise TypeError("map_async() needs at least one iterable")
        ar = self._map_async(_with_kwargs(function, kwargs), _columns(iterables), self._granularity)
        _requests(self).add(ar)
        return ar

    def _map_async(self, fn: Callable[..., Any], cols: tuple[list[Any], ...], granularity: float) -> AsyncResult:
        results = self._dtm_chunked(fn, cols, granularity)  # the first chunks are submitted now
        ar = AsyncResult()
        ar.set_running_or_notify_cancel()
        threading.Thread(target=_drain, args=(ar, results), name="dtm-map-async", daemon=True).start()
        return ar

    def imap(self, function: Callable[..., Any], /, *iterables: Iterable[Any], chunksize: int | None = None) -> Iterator[Any]:
        """Results in order, each as soon as it and those before it are ready (lazy input)."""
        if not iterables:
            raise TypeError("imap() needs at least one iterable")
        return self._dtm_chunked(function, iterables, 0.0, chunksize)

    def imap_unordered(self, function: Callable[..., Any], iterable: Iterable[Any], chunksize: int = 1) -> Iterator[Any]:
        """Results in completion order, keeping ``chunksize`` tasks in flight (DTM's meaning: with
        ``chunksize=1`` the calls run one after the other, in order)."""
        if isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1:
            raise ValueError(f"chunksize must be an int >= 1, not {chunksize!r}")
        self._check_open()
        total = _map._known_length((iterable,)) if self._show_progress else None
        source = iter(iterable)
        inflight: set[Future[Any]] = set()
        finished: collections.deque[Future[Any]] = collections.deque()

        def fill() -> None:
            while len(inflight) < chunksize:
                try:
                    item = next(source)
                except StopIteration:
                    return
                fut = self.submit(function, item)
                inflight.add(fut)
                fut.add_done_callback(finished.append)  # completion order

        fill()

        def results() -> Iterator[Any]:
            bar = _progress.start(function, total) if self._show_progress else None
            try:
                while inflight:
                    if not finished:
                        done, _ = futures.wait(inflight, return_when=futures.FIRST_COMPLETED)
                        if not finished:  # the wake-up can precede the done-callbacks
                            finished.extend(done)
                    while finished:
                        fut = finished.popleft()
                        if fut not in inflight:
                            continue  # already yielded
                        inflight.discard(fut)
                        fill()
                        value = fut.result()
                        if bar is not None:
                            bar.update(1)
                        yield value
            finally:  # given up: queued calls are not run
                for fut in inflight:
                    cancel_future(fut)
                if bar is not None:
                    bar.close()

        return results()

    def filter(self, function: Callable[..., Any], iterable: Iterable[Any]) -> list[Any]:
        """The items for which ``function(item)`` is true, computed in parallel, kept in order."""
        items = list(iterable)
        keep = self._dtm_map(function, items)
        return [x for x, k in zip(items, keep) if k]

    def repeat(self, function: Callable[..., Any], n: int, /, *args: Any, **kwargs: Any) -> list[Any]:
        """``[function(*args, **kwargs) for _ in range(n)]``, computed in parallel."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be an int >= 0, not {n!r}")
        return list(self._dtm_chunked(_Repeat(function, args, kwargs), (range(n),), self._granularity))

    def waitAll(self, reqList: Sequence[Future[Any]] | None = None) -> None:
        """Wait until every request in ``reqList`` (default: this task's pending asynchronous
        requests) is ready."""
        wait_all(reqList, self)

    def waitAny(self, reqList: Sequence[Future[Any]] | None = None) -> Future[Any] | None:
        """Wait until one pending request of ``reqList`` (default: this task's) is ready, then
        return the last one that finished (possibly not the only one). With nothing pending it
        returns at once: the last finished, or None if none has finished."""
        return wait_any(reqList, self)

    def testAll(self, reqList: Sequence[Future[Any]] | None = None) -> bool:
        """Whether every request of ``reqList`` (default: this task's) is ready; never blocks."""
        return test_all(reqList, self)

    def testAny(self, reqList: Sequence[Future[Any]] | None = None) -> Future[Any] | None:
        """The last finished request of ``reqList`` (default: this task's), or None if none has
        finished; never blocks. Calling it again returns the same one until another finishes."""
        return test_any(reqList, self)

    def getWorkerId(self) -> int:
        """The rank of the worker running the current task (0 in the root task)."""
        return current_worker_id()


def wait_all(reqList: Sequence[Future[Any]] | None, owner: Any = None) -> None:
    fs = _candidates(reqList, owner)
    pending = [f for f in fs if not f.done()]
    if pending:
        futures.wait(pending)  # inside a task, this wait helps


def wait_any(reqList: Sequence[Future[Any]] | None, owner: Any = None) -> Future[Any] | None:
    fs = _candidates(reqList, owner)
    pending = [f for f in fs if not f.done()]
    if pending:
        futures.wait(pending, return_when=futures.FIRST_COMPLETED)
    return _last_finished(fs)


def test_all(reqList: Sequence[Future[Any]] | None, owner: Any = None) -> bool:
    fs = _candidates(reqList, owner)
    return all(f.done() for f in fs)


def test_any(reqList: Sequence[Future[Any]] | None, owner: Any = None) -> Future[Any] | None:
    fs = _candidates(reqList, owner)
    return _last_finished(fs)


def current_worker_id() -> int:
    w = executing_worker()
    return int(w.rank) if w is not None else 0

"""``map`` with automatic chunking and a bounded window of chunks in flight.

Chunks start at one item (durations unknown: a long task must not be batched blindly), then are
sized so that one chunk takes about `TARGET_CHUNK_SECONDS`, and no bigger than a quarter of a
worker's share of what is left, so the end of the map still balances. Input is consumed lazily:
only the window's items are read ahead of the consumer.

A leaf: imports the leaves `_futures`, `_serial` and `_log` only.
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import time
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import Any, Callable, Iterable, Iterator

from ._log import brief_exc
from ._futures import cancel_future
from ._serial import fn_name

log = logging.getLogger("dtm_executor")

TARGET_CHUNK_SECONDS = 0.01
#: the smallest chunk worth a round trip when the tail of a map is split for balance (seconds)
FLOOR_CHUNK_SECONDS = 0.001
_MAX_CHUNK = 1 << 16

# seconds per item measured by earlier maps of the same function (a starting point only)
_fn_time: dict[int, float] = {}


class ChunkSizer:
    def __init__(self, fn: Any, chunksize: int | None, nworkers: int, granularity: float = 0.0) -> None:
        self.fixed = chunksize
        self.n = max(1, nworkers)
        self.key = id(fn)
        self.per_item = _fn_time.get(self.key)
        self.target = max(TARGET_CHUNK_SECONDS, granularity)

    def window(self) -> int:
        """Chunks allowed in flight."""
        if self.fixed is None and self.per_item is None:
            return 2 * self.n
        return 2 * self.n + 2

    def next_size(self, remaining: int | None) -> int:
        if self.fixed is not None:
            return self.fixed
        if self.per_item is None:
            return 1
        per = max(self.per_item, 1e-8)
        size = self.target / per
        if remaining is not None:  # balance the tail, but not with chunks of nothing
            size = min(size, max(math.ceil(remaining / (4 * self.n)), FLOOR_CHUNK_SECONDS / per))
        return int(max(1, min(size, _MAX_CHUNK)))

    def observe(self, nitems: int, seconds: float) -> None:
        if nitems <= 0 or seconds <= 0:
            return
        per = seconds / nitems
        self.per_item = per if self.per_item is None else 0.5 * self.per_item + 0.5 * per
        _fn_time[self.key] = self.per_item
        if len(_fn_time) > 4096:
            _fn_time.clear()


def _known_length(iterables: tuple[Iterable[Any], ...]) -> int | None:
    try:
        return min(len(it) for it in iterables)  # type: ignore[arg-type]
    except TypeError:
        return None


def _log_item_failures(fn: Any, first: int, fut: Future[Any]) -> None:
    """Log (DEBUG) the first failed item of a settled chunk by its index in the map's input,
    unless the scheduler did as it settled the chunk: it does when the chunk's ``_dtm_first``
    was set by then, which is nearly always (this callback runs after it)."""
    if getattr(fut, "_dtm_logged", False) or fut.cancelled() or fut.exception() is not None:
        return  # logged already, or the whole chunk failed (the scheduler logged that)
    errs = fut.result()[1]
    if errs and log.isEnabledFor(logging.DEBUG):  # the caller gets the exception: DEBUG only
        i, e = errs[0]
        log.debug("map(%s) item %d raised %s (%d item(s) of its chunk failed)",
                  fn_name(fn), first + i, brief_exc(e), len(errs))


def check_buffersize(buffersize: Any) -> None:
    """Python 3.14's checks of ``Executor.map``'s ``buffersize``, in its words."""
    if buffersize is not None and not isinstance(buffersize, int):
        raise TypeError("buffersize must be an integer or None")
    if buffersize is not None and buffersize < 1:
        raise ValueError("buffersize must be None or > 0")


def chunked_map(
    submit_chunk: Callable[[Callable[..., Any], list[Any], bool], Future[Any]],
    fn: Callable[..., Any],
    iterables: tuple[Iterable[Any], ...],
    timeout: float | None,
    chunksize: int | None,
    nworkers: int,
    granularity: float = 0.0,
    progress: Callable[[Any, int | None], Any] | None = None,
    buffersize: int | None = None,
    starred: bool = False,
) -> Iterator[Any]:
    """Start the map now (like the standard library) and return its ordered result iterator.

    ``progress(fn, total)``, when given, makes a bar (``update(n)``, ``close()``) that counts the
    items whose results reached the consumer. ``buffersize``: at most that many items read and
    not yet yielded (Python 3.14's meaning, counted in items whatever the chunks). ``starred``:
    the one iterable holds argument tuples (``starmap``)."""
    if chunksize is not None and chunksize < 1:
        raise ValueError("chunksize must be >= 1.")
    check_buffersize(buffersize)
    end = None if timeout is None else time.monotonic() + timeout
    star = starred or len(iterables) != 1
    source: Iterator[Any] = zip(*iterables) if len(iterables) != 1 else iter(iterables[0])
    remaining = _known_length(iterables)
    sizer = ChunkSizer(fn, chunksize, nworkers, granularity)
    window: list[tuple[Future[Any], int]] = []
    state: dict[str, Any] = {"exhausted": False, "remaining": remaining, "ahead": 0, "read": 0}

    def fill() -> None:
        # Chunks "in flight" are those not finished; finished ones wait for the consumer, up to a
        # bound, so one slow chunk at the head does not leave workers without work.
        while not state["exhausted"] and len(window) < 4 * sizer.window():
            if sum(1 for f, _ in window if not f.done()) >= sizer.window():
                break
            size = sizer.next_size(state["remaining"])
            if buffersize is not None:
                size = min(size, buffersize - state["ahead"])
                if size <= 0:
                    break
            items = list(itertools.islice(source, size))
            if not items:
                state["exhausted"] = True
                break
            if state["remaining"] is not None:
                state["remaining"] -= len(items)
            state["ahead"] += len(items)
            fut = submit_chunk(fn, items, star)
            # where the chunk starts in the input: a failure names its item there (the callback
            # logs it if the chunk settled before this line)
            fut._dtm_first = state["read"]  # type: ignore[attr-defined]
            fut.add_done_callback(functools.partial(_log_item_failures, fn, state["read"]))
            state["read"] += len(items)
            window.append((fut, len(items)))
            if len(items) < size:
                state["exhausted"] = True

    fill()

    def results() -> Iterator[Any]:
        bar = None if progress is None else progress(fn, remaining)
        try:
            while window:
                fut, n = window[0]
                while not fut.done():  # top the window up whenever any chunk finishes
                    fill()
                    running = [f for f, _ in window if not f.done()]
                    left = None if end is None else end - time.monotonic()
                    if left is not None and left <= 0:
                        break
                    wait(running, left, FIRST_COMPLETED)
                if end is None:
                    values, errs = fut.result()
                else:
                    values, errs = fut.result(end - time.monotonic())
                window.pop(0)
                first = getattr(fut, "_dtm_first", 0)
                if bar is not None:
                    bar.update(errs[0][0] if errs else n)
                sizer.observe(n, getattr(fut, "_dtm_dur", 0.0))
                fill()
                del fut
                stop = errs[0][0] if errs else len(values)
                del values[stop:]
                values.reverse()
                while values:  # pop as we go: the consumer may drop what it was given
                    if buffersize is not None:  # as Python 3.14: refill, then yield
                        state["ahead"] -= 1
                        fill()
                    yield values.pop()
                if errs:
                    exc = errs[0][1]
                    if hasattr(exc, "add_note"):  # Python 3.11+: the traceback names the item
                        exc.add_note(f"(item {first + errs[0][0]} of the map's input)")
                    raise exc
        finally:  # given up (closed, collected, or an error): queued chunks are not run
            for fut, _ in window:
                cancel_future(fut)
            if bar is not None:
                bar.close()

    return results()

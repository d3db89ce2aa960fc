"""A task as every rank keeps it (`Task`), its wire form, and how a map chunk runs (`run_chunk`).

Imports `protocol` and the leaves `_serial`, `_futures`."""

from __future__ import annotations

from typing import Any, Callable

from .. import _serial
from .._futures import DTMFuture
from .protocol import TaskState

_QUEUED = TaskState.QUEUED  # a module global: an Enum attribute costs ~0.1 µs on Python 3.11


class Task:
    __slots__ = (
        "owner", "tid", "kind", "fn", "args", "kwargs", "fid", "fnblob", "blob", "bufs",
        "future", "depth", "state", "home", "where", "retries", "parent", "attempt", "hop", "ran_on",
        "suspect",
    )

    def __init__(
        self, owner: int, tid: int, kind: int, depth: int, fid: Any = None, fnblob: bytes = b"",
        blob: Any = None, bufs: Any = (), parent: tuple[int, int] | None = None, attempt: int = 0,
        hop: int = 0,
    ) -> None:
        self.owner = owner
        self.tid = tid
        self.kind = kind
        self.depth = depth
        self.fn: Any = None
        self.args: Any = None
        self.kwargs: Any = None
        self.fid = fid
        self.fnblob = fnblob  # the pickled function, once known
        self.blob = blob
        self.bufs = bufs
        self.future: DTMFuture | None = None
        self.state = _QUEUED
        self.home: Any = None  # the Worker whose queues hold it (see `_futures.cancel_future`)
        self.where = -1  # rank the task was sent to, for owned tasks
        self.retries = 0  # workers that died while (possibly) running it: the poison-task count
        self.parent = parent  # (owner, tid) of the submitting task
        # Where the task is, as its owner knows it (see "Where every task is" in docs/design.md):
        # ``attempt`` grows each time the owner re-queues it after a loss, so that news about an
        # older attempt is ignored; ``hop`` counts hand-overs within an attempt, so that the
        # owner keeps the newest of MOVED notices that may arrive out of order.
        self.attempt = attempt
        self.hop = hop
        self.ran_on = -1  # rank that confirmed (START) it is running this attempt
        # it was on a worker that died: runs only after telling its owner
        self.suspect = attempt > 0

    def wire_desc(self, fnblob: bytes | None, attempt: int, hop: int) -> tuple[Any, ...]:
        """This task as a `TaskDesc`, in the plain tuple form that travels (fields in
        `TaskDesc`'s order). ``fnblob``: the function's bytes, or None if the receiver has them."""
        return (self.owner, self.tid, self.fid, fnblob, self.blob, len(self.bufs), self.depth,
                int(self.kind), self.parent, attempt, hop)

    def fn_label(self) -> str:
        """The function's name; read from its pickle when it is not (or cannot be) unpickled."""
        if self.fn is not None:
            return _serial.fn_name(self.fn)
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

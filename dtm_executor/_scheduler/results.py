"""Outcomes that travel: a finished task's value or exception packed as a `ResultEntry` and held a
moment to share a RESULTS message with others (`ResultBatch`), read back by its owner
(`unpack_outcome`).

Imports `protocol`, `task` and the leaf `_serial`."""

from __future__ import annotations

import threading
import time
from typing import Any

from .. import _serial
from .._serial import SerializationError, describe, dumps, loads
from .protocol import Outcome, ResultEntry, TaskKind
from .task import Task

#: the longest a finished task's result waits to be batched with others (seconds)
RESULT_DELAY = 0.002

_perf = time.perf_counter
# module globals: read for every result, and an Enum attribute costs ~0.1 µs on Python 3.11
_CHUNK = TaskKind.CHUNK
_RAISED, _RETURNED = int(Outcome.RAISED), int(Outcome.RETURNED)


class ResultBatch:
    """Outcomes of tasks run here for other ranks, one RESULTS message per owner, held at most
    `RESULT_DELAY` so that short tasks share messages (the node's sender thread sends a batch
    that a long next task would otherwise hold back: `due`)."""

    def __init__(self, rank: int) -> None:
        self.rank = rank
        self._lock = threading.Lock()
        self._out: dict[int, tuple[list[Any], list[Any]]] = {}  # owner -> (entries, buffers)
        self._n = 0
        self._since = 0.0

    def add(self, task: Task, ok: bool, value: Any, dur: float) -> tuple[bool, bool]:
        """Pack and hold the outcome of ``task``. Returns (send now, it is the first held): an
        outcome with buffers, a full batch or an old one should be sent now. A value that
        cannot be pickled becomes a `SerializationError` for the owner."""
        rank = self.rank
        try:
            if ok:
                if task.kind == _CHUNK and value[1]:
                    value = (value[0], [(i, _serial.pack_exception(e, f"raised on rank {rank}")[0]) for i, e in value[1]])
                data, bufs = dumps(value)
                code = _RETURNED
            else:
                data, bufs = _serial.pack_exception(value, f"{task.label()} raised on rank {rank}")
                code = _RAISED
        except Exception as e:  # noqa: BLE001
            err = SerializationError(
                f"the result of {task.label()} could not be pickled on rank {rank}: "
                f"{describe(value)} ({type(e).__name__}: {e})"
            )
            data, bufs = _serial.pack_exception(err, "")
            code = _RAISED
        raw = [b.raw() for b in bufs]
        now = _perf()
        with self._lock:
            box = self._out.get(task.owner)
            if box is None:
                box = self._out[task.owner] = ([], [])
            first = self._n == 0
            if first:
                self._since = now
            box[0].append(ResultEntry.wire(task.tid, code, data, len(raw), dur))
            box[1].extend(raw)
            self._n += 1
            return bool(raw) or self._n >= 256 or now - self._since > RESULT_DELAY, first

    def due(self) -> float | None:
        """When (``time.perf_counter``) the held outcomes must leave; None if none are held."""
        return self._since + RESULT_DELAY if self._n else None

    def take(self) -> dict[int, tuple[list[Any], list[Any]]]:
        """Everything held, by owner: (entries, buffers) for one RESULTS message each."""
        with self._lock:
            if not self._n:
                return {}
            out = self._out
            self._out = {}
            self._n = 0
        return out


def failure_entries(tids: list[int], exc: BaseException) -> list[tuple[Any, ...]]:
    """The ResultEntry tuples that fail tasks ``tids`` with ``exc`` (pickled once)."""
    data, _ = _serial.pack_exception(exc, "")
    return [ResultEntry.wire(tid, _RAISED, data, 0, 0.0) for tid in tids]


def unpack_outcome(task: Task, code: int, data: Any, bufs: Any, rank: int) -> tuple[bool, Any]:
    """(ok, value) of an outcome received by ``rank``, the task's owner."""
    try:
        if code == _RETURNED:
            value = loads(data, bufs)
            if task.kind == _CHUNK and value[1]:
                value = (value[0], [(i, _serial.unpack_exception(b, ())) for i, b in value[1]])
            return True, value
        return False, _serial.unpack_exception(data, bufs)
    except Exception as e:  # noqa: BLE001
        return False, SerializationError(
            f"the result of {task.label()} could not be unpickled on rank {rank}: "
            f"{type(e).__name__}: {e}"
        )


"""What the scheduler needs from a transport (`Wire`), and what a `Worker` and the `Hub` may ask
of their `Node` (`NodeServices`): typing Protocols, so that no scheduler module imports upward.

Imports `task` and the leaf `_serial`."""

from __future__ import annotations

import threading
from typing import Any, Iterable, Protocol, Sequence

from .._serial import FunctionCache
from .task import Task


class Wire(Protocol):
    """A transport as the node uses it (`dtm_executor.Transport` has these and ``close``)."""

    @property
    def rank(self) -> int: ...

    @property
    def size(self) -> int: ...

    def send(self, dest: int, frames: Sequence[Any]) -> None: ...

    def recv(self, timeout: float | None = None) -> tuple[int, Any] | None: ...

    def wakeup(self) -> None: ...


class NodeServices(Protocol):
    """The part of a `Node` its `Worker` and `Hub` use: sending, the owner's table of tasks it
    has sent away (``owned``, under ``owned_lock``), settling owned tasks, and what the run knows."""

    rank: int
    fncache: FunctionCache
    owned: dict[int, Task]
    owned_lock: threading.Lock
    dead: set[int]
    workers: list[int]
    broken: BaseException | None
    closed: bool
    trace: list[tuple[Any, ...]] | None

    def send(self, dest: int, msg: tuple[Any, ...], bufs: Iterable[Any] = ()) -> None: ...

    def next_tid(self) -> int: ...

    def wakeup(self) -> None: ...

    def wake_sender(self) -> None: ...

    def finish(self, task: Task, ok: bool, value: Any, dur: float) -> None: ...

    def settle_owned(self, task: Task, ok: bool, value: Any, dur: float) -> None: ...

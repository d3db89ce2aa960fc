"""What a transport is to the layers above: `Transport` moves frame lists between the ranks of a
run; a pool (`Pool`, made by a `PoolFactory`) starts, replaces and stops the workers of one
executor; `WorkerStart` is what each of those workers needs to start, in one wire form.

Imports only the leaf `_serial`: every transport module and the executor import this one.
"""

from __future__ import annotations

import pickle
from typing import Any, Callable, Iterable, Protocol, Sequence, Union, runtime_checkable

from .. import _serial

Buffer = Union[bytes, bytearray, memoryview]

#: Frames received from a peer, or ``None`` when the connection to that peer was lost.
Received = tuple[int, Union[list[memoryview], None]]


class TransportClosed(Exception):
    """Raised by `Transport.recv` once the transport has been closed."""


@runtime_checkable
class Transport(Protocol):
    """Moves frame lists between the ranks of one run.

    ``rank`` 0 runs the hub (the queue of top-level tasks). ``send`` may be called from any
    thread; ``recv`` from one thread only (the node's communication thread). ``recv`` returns
    ``None`` on timeout or after `wakeup`, and ``(src, None)`` when peer ``src`` is lost.
    """

    @property
    def rank(self) -> int:
        """This process's rank, 0 to ``size - 1``."""
        ...

    @property
    def size(self) -> int:
        """The number of ranks of the run."""
        ...

    def send(self, dest: int, frames: Sequence[Buffer]) -> None:
        """Send one message, a list of frames, to rank ``dest`` (in order with the others)."""
        ...

    def recv(self, timeout: float | None = None) -> Received | None:
        """The next message as ``(src, frames)``; ``(src, None)`` when ``src`` was lost; None
        after ``timeout`` seconds or a `wakeup`."""
        ...

    def wakeup(self) -> None:
        """Make a `recv` in progress (or the next one) return None at once."""
        ...

    def close(self) -> None:
        """Release the transport; a later `recv` raises `TransportClosed`."""
        ...


class WorkerStart:
    """What every worker of one executor needs before its first task: the options of its node
    (``max_threads``, ``max_retries``, ``trace``), the pickled ``(initializer, initargs)``, and
    how to import the user's main module. `frames` is the start message a pool hands each
    worker (first message on its connection); the worker side reads it with `decode`."""

    __slots__ = ("options", "init_blob", "_prep")

    def __init__(self, options: dict[str, Any], init_blob: bytes) -> None:
        self.options = options
        self.init_blob = init_blob
        self._prep: list[dict[str, Any] | None] = []

    def preparation(self) -> dict[str, Any] | None:
        """How a worker process imports the user's ``__main__`` (multiprocessing's spawn data;
        no authkey, no ``<stdin>``), or None when it cannot (an unusual ``__main__``)."""
        if not self._prep:
            try:
                self._prep.append(_serial.preparation_data("dtm-worker"))
            except Exception:  # noqa: BLE001 - unusual __main__; workers then skip importing it
                self._prep.append(None)
        return self._prep[0]

    def frames(
        self,
        rank: int,
        size: int,
        *,
        workers: Iterable[int] | None = None,
        import_main: bool = True,
        remote_dir: str | None = None,
    ) -> list[bytes]:
        """The start message of worker ``rank`` in a run of ``size`` ranks. ``workers``: the
        ranks that run tasks, when not ``1..size-1`` (a replacement joins a run that lost some);
        ``import_main``: False for workers that share this process (threads); ``remote_dir``: the
        working directory of a worker on another host."""
        prep = self.preparation() if import_main else None
        if prep is not None and remote_dir:
            prep = dict(prep, dir=remote_dir)
        opts = self.options if workers is None else dict(self.options, workers=list(workers))
        return [pickle.dumps(rank), pickle.dumps((size, prep, opts), 5), self.init_blob]

    @staticmethod
    def decode(frames: Sequence[Buffer]) -> tuple[int, int, dict[str, Any] | None, dict[str, Any], Buffer]:
        """(rank, size, preparation data, node options, pickled initializer) of a start message."""
        rank = pickle.loads(frames[0])
        size, prep, options = pickle.loads(frames[1])
        return rank, size, prep, options, frames[2]


class Pool(Protocol):
    """The workers of one executor, as `_executor` and `_lifecycle` use them.

    ``transport`` is rank 0's end; ``workers`` the ranks that run tasks; ``local_worker``
    whether rank 0 runs tasks too (MPI). ``join(timeout)`` waits for the workers to exit (after
    SHUTDOWN), then ends what is left; ``kill`` ends them at once."""

    transport: Transport
    workers: list[int]
    local_worker: bool

    def describe(self, rank: int) -> str:
        """How to name ``rank`` in a message (its pid, host, how it ended)."""
        ...

    def exit_status(self, rank: int) -> int | None: ...

    def join(self, timeout: float) -> None: ...

    def kill(self) -> None: ...


class ReplacingPool(Pool, Protocol):
    """A pool that starts a new worker in place of a lost one (optional: see `_on_worker_lost`
    in `_executor`)."""

    def replace(
        self,
        dead: int,
        workers: list[int],
        call_soon: Callable[[Callable[[], None]], None],
        on_ready: Callable[[int], None],
        on_failed: Callable[[int, str], None],
    ) -> int | None:
        """Start a worker (a new rank) in place of ``dead``; None once it no longer replaces.
        ``on_ready(rank)``/``on_failed(rank, text)`` must run on the communication thread
        (through ``call_soon``), before the new worker's first message can arrive."""
        ...

    def stop_replacing(self, rank: int) -> None:
        """A replacement (``rank``) could not start: start no more."""
        ...


#: ``factory(max_workers, start, options)``: start the workers of one executor. It pops the
#: keyword ``options`` of `DTMExecutor` it understands from that dict (what is left is warned
#: about), and raises (best: `BrokenDTMExecutor`) if the workers cannot start.
PoolFactory = Callable[[int, WorkerStart, dict[str, Any]], Pool]

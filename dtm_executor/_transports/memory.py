"""The memory transport (``transport="memory"``): every worker is a thread of this process, and
frames go through in-process mailboxes, still pickled (and copied) as on any other transport.

It exists to test the scheduler without processes: runs start in milliseconds, `MemoryNetwork`
takes any number of ranks (a test may play some of them itself), ``tap`` sees every message, and
`MemoryPool.lose` cuts a worker off as if its process had died. Ranks talk directly (like MPI,
unlike the star of the socket transports). The initializer runs in each worker thread, all in
this process. Imports `base`, `worker` and the leaves.
"""

from __future__ import annotations

import collections
import errno
import sys
import threading
import time
from typing import Any, Callable, Sequence

from . import worker
from .base import Buffer, Received, WorkerStart

#: ``tap(src, dest, frames)``: called for every message sent (in the sender's thread).
Tap = Callable[[int, int, list[memoryview]], None]


class _Mailbox:
    __slots__ = ("q", "cv", "woken", "closed")

    def __init__(self) -> None:
        self.q: collections.deque[Received] = collections.deque()
        self.cv = threading.Condition(threading.Lock())
        self.woken = False
        self.closed = False

    def put(self, item: Received) -> bool:
        with self.cv:
            if self.closed:
                return False
            self.q.append(item)
            self.cv.notify()
            return True


class MemoryNetwork:
    """The ranks of one in-process run: a mailbox per rank. A rank's loss is seen by rank 0 as
    ``(rank, None)``; rank 0's loss by every other rank as ``(0, None)`` (as when a process's
    sockets close)."""

    def __init__(self, size: int, tap: Tap | None = None) -> None:
        self.size = size
        self.tap = tap
        self._lock = threading.Lock()
        self._boxes: dict[int, _Mailbox] = {}

    def end(self, rank: int) -> MemoryTransport:
        """Rank ``rank``'s transport (a new rank beyond ``size`` grows the run)."""
        with self._lock:
            if rank in self._boxes:
                raise ValueError(f"rank {rank} of this network has its end already")
            self._boxes[rank] = _Mailbox()
            self.size = max(self.size, rank + 1)
        return MemoryTransport(self, rank)

    def cut(self, rank: int) -> None:
        """``rank`` is gone, as if its process died: nothing more reaches it or comes from it."""
        with self._lock:
            box = self._boxes.get(rank)
            boxes = dict(self._boxes)
        if box is None or box.closed:
            return
        if rank == 0:
            for r, b in boxes.items():
                if r != 0:
                    b.put((0, None))
        else:
            hub = boxes.get(0)
            if hub is not None:
                hub.put((rank, None))
        if rank != 0:
            box.put((0, None))  # its own node learns that it is cut off
        with box.cv:
            box.closed = True

    def close(self) -> None:
        """End the run: every rank is cut off (rank 0 first: the workers then stop)."""
        with self._lock:
            ranks = sorted(self._boxes)
        for r in ranks:
            self.cut(r)

    def _deliver(self, src: int, dest: int, frames: list[memoryview]) -> None:
        with self._lock:
            mine = self._boxes.get(src)
            box = self._boxes.get(dest)
        if mine is None or mine.closed:
            raise OSError(errno.ENOTCONN, f"rank {src} is cut off")
        if self.tap is not None:
            self.tap(src, dest, frames)
        if box is None or not box.put((src, frames)):
            raise OSError(errno.ENOTCONN, f"no connection to rank {dest}")

    def _recv(self, rank: int, timeout: float | None) -> Received | None:
        box = self._boxes[rank]
        end = None if timeout is None else time.monotonic() + timeout
        with box.cv:
            while True:
                if box.q:
                    return box.q.popleft()
                if box.woken or box.closed:
                    box.woken = False
                    return None
                if end is None:
                    box.cv.wait()
                else:
                    left = end - time.monotonic()
                    if left <= 0:
                        return None
                    box.cv.wait(left)

    def _wake(self, rank: int) -> None:
        box = self._boxes[rank]
        with box.cv:
            box.woken = True
            box.cv.notify()


class MemoryTransport:
    """One rank's end of a `MemoryNetwork` (a `Transport`)."""

    def __init__(self, network: MemoryNetwork, rank: int) -> None:
        self._net = network
        self._rank = rank

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def size(self) -> int:
        return self._net.size

    def send(self, dest: int, frames: Sequence[Buffer]) -> None:
        copies = [memoryview(bytes(memoryview(f))) for f in frames]  # what the receiver gets is its own
        self._net._deliver(self._rank, dest, copies)

    def recv(self, timeout: float | None = None) -> Received | None:
        return self._net._recv(self._rank, timeout)

    def wakeup(self) -> None:
        self._net._wake(self._rank)

    def close(self) -> None:
        self._net.cut(self._rank)


class MemoryPool:
    """The workers of one ``transport="memory"`` executor: ``max_workers`` threads of this
    process, each serving as a worker rank (`worker.serve`, in process). Lost workers are
    replaced by new threads, as the local transport replaces processes."""

    local_worker = False

    def __init__(self, nworkers: int, start: WorkerStart, options: dict[str, Any] | None = None) -> None:
        _configure.enter()  # tasks run in this process (as on MPI's rank 0)
        self._configured = True
        self.network = MemoryNetwork(nworkers + 1)
        self.transport = self.network.end(0)
        self.workers = list(range(1, nworkers + 1))
        self.threads: dict[int, threading.Thread] = {}
        self._start = start
        self._lock = threading.Lock()
        self._closed = False
        self._replacing = True
        self._next_rank = nworkers + 1
        try:
            for rank in self.workers:
                self._spawn(rank, start.frames(rank, nworkers + 1, import_main=False))
        except BaseException:
            self.kill()
            raise

    def _spawn(self, rank: int, frames: list[bytes]) -> None:
        end = self.network.end(rank)
        t = threading.Thread(target=worker.serve, args=(frames, lambda rank, size: end),
                             kwargs={"in_process": True}, name=f"dtm-memory-{rank}", daemon=True)
        self.threads[rank] = t
        t.start()

    def lose(self, rank: int) -> None:
        """Cut worker ``rank`` off as if its process had died. A task it is running goes on in
        its thread, but its result goes nowhere; rank 0 re-runs it elsewhere."""
        self.network.cut(rank)

    def replace(
        self,
        dead: int,
        workers: list[int],
        call_soon: Callable[[Callable[[], None]], None],
        on_ready: Callable[[int], None],
        on_failed: Callable[[int, str], None],
    ) -> int | None:
        """Start a worker thread (a new rank) in place of ``dead``; None if we no longer replace.
        It starts on the communication thread, after the hub has learnt of it."""
        with self._lock:
            if self._closed or not self._replacing:
                return None
            rank = self._next_rank
            self._next_rank += 1
        live = [w for w in workers if w != dead] + [rank]
        frames = self._start.frames(rank, rank + 1, workers=live, import_main=False)

        def join() -> None:
            on_ready(rank)
            with self._lock:
                if not self._closed:
                    self._spawn(rank, frames)

        call_soon(join)
        return rank

    def stop_replacing(self, rank: int) -> None:
        with self._lock:
            self._replacing = False

    def describe(self, rank: int) -> str:
        return f"worker rank {rank} (a thread of this process)"

    def exit_status(self, rank: int) -> int | None:
        return None

    def join(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        for t in list(self.threads.values()):
            t.join(max(0.0, end - time.monotonic()))
        self.kill()

    def kill(self) -> None:
        with self._lock:
            self._closed = True
            configured, self._configured = self._configured, False
        self.network.close()
        if configured:
            _configure.leave()


class _Configure:
    """While memory pools run, this process is configured as a worker process is (deep stacks, a
    responsive communication thread); the settings it had come back when the last one ends."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pools = 0
        self._saved: tuple[float, int, int] | None = None

    def enter(self) -> None:
        with self._lock:
            if self._pools == 0:
                self._saved = (sys.getswitchinterval(), sys.getrecursionlimit(), threading.stack_size())
                worker.configure_process()
            self._pools += 1

    def leave(self) -> None:
        with self._lock:
            self._pools -= 1
            if self._pools == 0 and self._saved is not None:
                interval, limit, stack = self._saved
                sys.setswitchinterval(interval)
                sys.setrecursionlimit(limit)
                threading.stack_size(stack)


_configure = _Configure()

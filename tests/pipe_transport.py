"""A transport from outside dtm_executor, in one module, on its public API only ("How to add a
transport" in docs/design.md, step by step): worker processes connected to rank 0 by socket
pairs, each message one pickled ``(peer, frames)`` record on a `multiprocessing.connection`
(rank 0 forwards messages between workers: a star).

tests/test_third_party_transport.py registers it, with `dtm_executor.register_transport` and
through the ``dtm_executor.transports`` entry-point group, and runs the behaviour suite on it.
"""

from __future__ import annotations

import os
import pickle
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Any, Sequence

import dtm_executor

_WAKE = object()
_BOOT = (f"import sys; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r}); "
         "import pipe_transport; pipe_transport.worker_main()")


# -- step 1: the Transport (rank 0's end, or a worker's) -----------------------------------------
class PipeEnd:
    """One rank's end. ``recv`` reads an inbox that one reader thread per connection fills."""

    def __init__(self, rank: int, size: int, conn: Connection | None = None) -> None:
        self._rank = rank
        self._size = size
        self._inbox: queue.Queue[Any] = queue.Queue()
        self._conns: dict[int, Connection] = {}
        self._locks: dict[int, threading.Lock] = {}
        if conn is not None:  # a worker: its one connection goes to rank 0
            self.add(0, conn)

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def size(self) -> int:
        return self._size

    def add(self, peer: int, conn: Connection) -> None:
        self._conns[peer] = conn
        self._locks[peer] = threading.Lock()
        threading.Thread(target=self._read, args=(peer, conn), daemon=True).start()

    def _write(self, peer: int, src_or_dest: int, frames: Sequence[Any]) -> None:
        conn = self._conns.get(peer)
        if conn is None:
            raise OSError(f"no connection to rank {peer}")
        data = pickle.dumps((src_or_dest, [bytes(memoryview(f)) for f in frames]), 5)
        with self._locks[peer]:
            conn.send_bytes(data)

    def send(self, dest: int, frames: Sequence[Any]) -> None:
        if self._rank == 0:
            self._write(dest, 0, frames)
        else:
            self._write(0, dest, frames)  # rank 0 forwards it

    def _read(self, peer: int, conn: Connection) -> None:
        try:
            while True:
                other, frames = pickle.loads(conn.recv_bytes())
                if self._rank != 0 or other == 0:
                    self._inbox.put((other if self._rank != 0 else peer, frames))
                elif 0 < other < self._size:
                    try:
                        self._write(other, peer, frames)
                    except OSError:
                        pass  # its loss is reported by its own reader
                else:  # addressed to nobody: a broken peer
                    raise OSError(f"rank {peer} addressed rank {other}")
        except (EOFError, OSError):
            self._conns.pop(peer, None)
            self._inbox.put((peer, None))
        finally:
            conn.close()  # here, never under a read in progress

    def recv(self, timeout: float | None = None) -> Any:
        try:
            item = self._inbox.get(timeout=timeout)
        except queue.Empty:
            return None
        return None if item is _WAKE else item

    def wakeup(self) -> None:
        self._inbox.put(_WAKE)

    def close(self) -> None:
        for conn in list(self._conns.values()):  # the readers see the end, and close them
            try:
                with socket.fromfd(conn.fileno(), socket.AF_UNIX, socket.SOCK_STREAM) as s:
                    s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


# -- step 2: the pool (what the factory returns) ---------------------------------------------------
class PipePool:
    """``factory(max_workers, start, options)``: start the workers, hand each its start message."""

    transport_options = frozenset({"label"})  # read by the entry-point registration

    def __init__(self, max_workers: int, start: Any, options: dict[str, Any]) -> None:
        self.label = options.pop("label", "pipe")
        size = max_workers + 1
        self.transport = PipeEnd(0, size)
        self.workers = list(range(1, size))
        self.local_worker = False
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        try:
            for rank in self.workers:
                a, b = socket.socketpair()
                env = dict(os.environ, PIPE_TRANSPORT_FD=str(b.fileno()))
                self.procs[rank] = subprocess.Popen([sys.executable, "-c", _BOOT], pass_fds=(b.fileno(),),
                                                    env=env, stdin=subprocess.DEVNULL)
                b.close()
                conn = Connection(a.detach())
                conn.send_bytes(pickle.dumps(start.frames(rank, size)))  # what serve_worker reads
                self.transport.add(rank, conn)
        except BaseException:
            self.kill()
            raise

    def describe(self, rank: int) -> str:
        p = self.procs.get(rank)
        return f"{self.label} worker rank {rank}" + (f" (pid {p.pid})" if p is not None else "")

    def exit_status(self, rank: int) -> int | None:
        p = self.procs.get(rank)
        return None if p is None else p.poll()

    def join(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        for p in self.procs.values():
            try:
                p.wait(max(0.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def kill(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
            p.wait()


# -- step 3: the worker's side ----------------------------------------------------------------------
def worker_main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is rank 0's to handle
    conn = Connection(int(os.environ.pop("PIPE_TRANSPORT_FD")))
    try:
        frames = pickle.loads(conn.recv_bytes())
    except (EOFError, OSError):
        os._exit(0)
    dtm_executor.serve_worker(frames, lambda rank, size: PipeEnd(rank, size, conn))

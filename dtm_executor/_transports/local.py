"""Local transport: worker processes on this machine, connected to rank 0 by socket pairs.

The topology is `framing`'s star: rank 0 forwards frames between workers without unpickling
them. Workers are started with ``subprocess`` (never ``fork``: threads and MPI make fork unsafe)
and import the user's ``__main__`` the way multiprocessing's *spawn* does (`worker.serve`). A
worker exits as soon as its socket to rank 0 closes, which is what happens when the parent dies,
however it dies. Imports `base`, `framing` and `worker`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Callable

from . import worker
from .base import WorkerStart
from .framing import LocalChannel, StarHub, StarWorker

_ENV_FD = "DTM_EXECUTOR_FD"
_BOOT = "from dtm_executor._transports.local import worker_main; worker_main()"


class LocalHubTransport(StarHub):
    """Rank 0's end: one channel per worker. A lost worker is reported by the executor with its
    exit status, so the star does not log lost connections too."""

    def __init__(self, nworkers: int) -> None:
        super().__init__(nworkers + 1, log_losses=False)


class LocalWorkerTransport(StarWorker):
    """A worker's end: everything goes through its channel to rank 0."""

    def __init__(self, ch: LocalChannel, rank: int, size: int) -> None:
        super().__init__(ch, rank, size, log_losses=False)


class LocalPool:
    """Starts, replaces and stops the worker processes of one executor."""

    def __init__(self, nworkers: int, start: WorkerStart, options: dict[str, Any] | None = None) -> None:
        self.transport = LocalHubTransport(nworkers)
        self.workers = list(range(1, nworkers + 1))
        self.local_worker = False
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._replacing = True
        self._next_rank = nworkers + 1
        self._start = start
        try:
            for rank in range(1, nworkers + 1):
                self.transport.add(rank, self._spawn(rank, start.frames(rank, nworkers + 1)))
        except BaseException:
            self.kill()
            raise

    def _spawn(self, rank: int, frames: list[bytes]) -> LocalChannel:
        cmd = [sys.executable, *subprocess._args_from_interpreter_flags(), "-c", _BOOT]  # type: ignore[attr-defined]
        a, b = socket.socketpair()
        env = dict(os.environ)
        env[_ENV_FD] = str(b.fileno())
        env["DTM_EXECUTOR_RANK"] = str(rank)
        with self._lock:
            if self._closed:
                a.close()
                b.close()
                raise OSError("the pool is shut down")
            try:
                proc = subprocess.Popen(
                    cmd, pass_fds=(b.fileno(),), env=env, stdin=subprocess.DEVNULL, close_fds=True
                )
            finally:
                b.close()
            self.procs[rank] = proc
        ch = LocalChannel(a, pass_fds=True)
        ch.send(0, frames)
        return ch

    def replace(
        self,
        dead: int,
        workers: list[int],
        call_soon: Callable[[Callable[[], None]], None],
        on_ready: Callable[[int], None],
        on_failed: Callable[[int, str], None],
    ) -> int | None:
        """Start a worker (a new rank) in place of ``dead``; None if we no longer replace.

        The new rank joins on the communication thread (``call_soon``): the hub learns of it
        before its first request can arrive.
        """
        with self._lock:
            if self._closed or not self._replacing:
                return None
            rank = self._next_rank
            self._next_rank += 1
        live = [w for w in workers if w != dead] + [rank]
        try:
            ch = self._spawn(rank, self._start.frames(rank, rank + 1, workers=live))
        except Exception as e:  # noqa: BLE001
            text = f"{type(e).__name__}: {e}"
            call_soon(lambda: on_failed(rank, text))
            return rank

        def join() -> None:
            on_ready(rank)
            self.transport.add(rank, ch)

        call_soon(join)
        return rank

    def stop_replacing(self, rank: int) -> None:
        with self._lock:
            self._replacing = False

    def describe(self, rank: int) -> str:
        p = self.procs.get(rank)
        if p is None:
            return f"worker rank {rank}"
        code = p.poll()
        if code is None:
            try:
                code = p.wait(0.2)
            except subprocess.TimeoutExpired:
                code = None
        how = "still running" if code is None else (f"killed by signal {-code}" if code < 0 else f"exit status {code}")
        return f"worker rank {rank} (pid {p.pid}, {how})"

    def exit_status(self, rank: int) -> int | None:
        p = self.procs.get(rank)
        if p is None:
            return None
        try:
            return p.wait(0.5)
        except subprocess.TimeoutExpired:
            return None

    def join(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        for p in list(self.procs.values()):
            try:
                p.wait(max(0.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def kill(self) -> None:
        with self._lock:
            self._closed = True
        for p in list(self.procs.values()):
            if p.poll() is None:
                try:
                    p.kill()
                except OSError:
                    pass
        for p in list(self.procs.values()):
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:  # pragma: no cover
                pass


def worker_main() -> None:
    """Entry point of a local worker process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    fd = int(os.environ.pop(_ENV_FD))
    sock = socket.socket(fileno=fd)
    sock.set_inheritable(False)  # a process a task forks must not keep rank 0's connection open
    ch = LocalChannel(sock, pass_fds=True)
    try:
        _, frames = ch.recv()
    except (EOFError, OSError):
        worker.exit_now(0)
    worker.serve(frames, lambda rank, size: LocalWorkerTransport(ch, rank, size))

"""Local transport: worker processes on this machine, connected to rank 0 by socket pairs.

The topology is a star: rank 0 forwards frames between workers without unpickling them (a
thread of its own does the forwarding, so receiving never waits on a slow peer). Workers are
started with ``subprocess`` (never ``fork``: threads and MPI make fork unsafe) and import the
user's ``__main__`` the way multiprocessing's *spawn* does. A worker exits as soon as its socket
to rank 0 closes, which is what happens when the parent dies, however it dies.
"""

from __future__ import annotations

import collections
import logging
import os
import pickle
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Sequence

from .framing import Buffer, FrameError, Received, _Channel, _Forwarder, _Waker, _WorkerEnd

log = logging.getLogger("dtm_executor")

_ENV_FD = "DTM_EXECUTOR_FD"
_BOOT = "from dtm_executor._transports.local import worker_main; worker_main()"


class LocalHubTransport:
    """Rank 0's end: one channel per worker, a selector, and a forwarding thread."""

    def __init__(self, nworkers: int) -> None:
        self._size = nworkers + 1
        self.channels: dict[int, _Channel] = {}
        self._sel = selectors.DefaultSelector()
        self._waker = _Waker()
        self._sel.register(self._waker.r, selectors.EVENT_READ, None)
        self._pending: collections.deque[Received] = collections.deque()
        self._closed = False
        self._fwd = _Forwarder(self.channels.get, (OSError,))

    @property
    def rank(self) -> int:
        return 0

    @property
    def size(self) -> int:
        return self._size

    def add(self, rank: int, ch: _Channel) -> None:
        """Serve a worker's channel (from the thread that calls `recv`, or before it runs)."""
        self.channels[rank] = ch
        self._size = max(self._size, rank + 1)
        self._sel.register(ch.sock, selectors.EVENT_READ, rank)

    def send(self, dest: int, frames: Sequence[Buffer]) -> None:
        self.channels[dest].send(0, frames)

    def recv(self, timeout: float | None = None) -> Received | None:
        if self._pending:
            return self._pending.popleft()
        if self._closed:
            return None
        try:
            events = self._sel.select(timeout)
        except (OSError, ValueError):
            return None
        for key, _ in events:
            rank = key.data
            if rank is None:
                self._waker.drain()
                continue
            ch = self.channels[rank]
            try:
                dest, frames = ch.recv()
            except (EOFError, OSError, FrameError):
                self._drop(rank)
                self._pending.append((rank, None))
                continue
            if dest == 0:
                self._pending.append((rank, frames))
            else:
                self._fwd.put(dest, rank, frames)
        return self._pending.popleft() if self._pending else None

    def _drop(self, rank: int) -> None:
        ch = self.channels.get(rank)
        if ch is None:
            return
        try:
            self._sel.unregister(ch.sock)
        except (KeyError, ValueError, OSError):
            pass
        ch.close()

    def wakeup(self) -> None:
        self._waker.wake()

    def close(self) -> None:
        self._closed = True
        self._fwd.close()
        for rank in list(self.channels):
            self._drop(rank)
        try:
            self._sel.close()
        except Exception:  # noqa: BLE001
            pass
        self._waker.close()


class LocalWorkerTransport(_WorkerEnd):
    """A worker's end: everything goes through its channel to rank 0."""

    def recv(self, timeout: float | None = None) -> Received | None:
        try:
            events = self._sel.select(timeout)
        except (OSError, ValueError):
            return (0, None)
        got: Received | None = None
        for key, _ in events:
            if key.data is None:
                self._waker.drain()
            else:
                try:
                    got = self._ch.recv()
                except (EOFError, OSError, FrameError):
                    return (0, None)
        return got


class LocalPool:
    """Starts, replaces and stops the worker processes of one executor."""

    def __init__(
        self, nworkers: int, options: dict[str, Any], init_blob: bytes, extra: dict[str, Any] | None = None
    ) -> None:
        from .. import _serial

        self.transport = LocalHubTransport(nworkers)
        self.workers = list(range(1, nworkers + 1))
        self.local_worker = False
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._replacing = True
        self._next_rank = nworkers + 1
        self._prep: dict[str, Any] | None
        try:
            self._prep = _serial.preparation_data("dtm-worker")  # no authkey; no "<stdin>" to import
        except Exception:  # noqa: BLE001 - unusual __main__; workers then skip importing it
            self._prep = None
        self._options = options
        self._init_blob = init_blob
        head = pickle.dumps((nworkers + 1, self._prep, options), 5)
        try:
            for rank in range(1, nworkers + 1):
                self.transport.add(rank, self._spawn(rank, head))
        except BaseException:
            self.kill()
            raise

    def _spawn(self, rank: int, head: bytes) -> _Channel:
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
        ch = _Channel(a, pass_fds=True)
        ch.send(0, [pickle.dumps(rank), head, self._init_blob])
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
        head = pickle.dumps((rank + 1, self._prep, dict(self._options, workers=live)), 5)
        try:
            ch = self._spawn(rank, head)
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


_booting = [False]


def booting() -> bool:
    """True while a worker imports the user's main module (no executor may start then)."""
    return _booting[0]


def worker_main() -> None:
    """Entry point of a local worker process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    fd = int(os.environ.pop(_ENV_FD))
    sock = socket.socket(fileno=fd)
    sock.set_inheritable(False)  # a process a task forks must not keep rank 0's connection open
    ch = _Channel(sock, pass_fds=True)
    try:
        _, frames = ch.recv()
    except (EOFError, OSError):
        os._exit(0)

    def report(text: str) -> None:
        from .. import _runtime

        ch.send(0, [pickle.dumps((_runtime.INITFAIL, text))])

    serve(frames, report, lambda rank, size: LocalWorkerTransport(ch, rank, size))


def serve(
    frames: list[Any],
    report_failure: Callable[[str], None],
    make_transport: Callable[[int, int], Any],
    where: str = "",
) -> None:
    """Everything a worker does once connected, whatever the transport: import the user's main
    module and run the initializer (a failure goes to rank 0 as INITFAIL), then serve tasks until
    rank 0 says stop or goes away. Never returns."""
    from .. import _runtime, _serial

    rank = pickle.loads(frames[0])
    size, prep, options = pickle.loads(frames[1])
    _booting[0] = True
    try:
        if prep is not None:
            import multiprocessing.spawn as mpspawn

            mpspawn.prepare(prep)
        _serial.refresh_main_policy()
        initializer, initargs = pickle.loads(frames[2])
        if initializer is not None:
            initializer(*initargs)
    except BaseException:  # noqa: BLE001 - reported to rank 0, then this worker ends
        import traceback

        try:
            report_failure(where + traceback.format_exc())
        except Exception:  # noqa: BLE001 - rank 0 is gone: nobody to tell
            pass
        _exit_now(1)
    finally:
        _booting[0] = False
    _configure_worker_process()
    node = _runtime.Node(
        make_transport(rank, size), hub=False, worker=True,
        workers=list(options.get("workers") or range(1, size)),
        max_threads=options.get("max_threads", 16),
    )
    node.max_retries = options.get("max_retries", node.max_retries)
    if options.get("trace"):
        node.trace = []

    def stop() -> None:
        node.flush_sends(2.0)
        _exit_now(0)

    node.on_stop = stop
    node.on_lost = lambda src: _exit_now(0)  # rank 0 is gone: nobody wants our results
    node.start(comm_in_thread=False)
    node.comm_loop()
    _exit_now(0)


def _configure_worker_process() -> None:
    sys.setswitchinterval(0.0005)  # the communication thread must not wait 5 ms for the GIL
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 50_000))
    threading.stack_size(64 << 20)  # deep inline recursion of nested tasks


def _exit_now(code: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001
            pass
    logging.shutdown()
    os._exit(code)

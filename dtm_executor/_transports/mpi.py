"""MPI transport: every rank is a worker, rank 0 also runs the root program and the hub (as in DTM).

Threads. One thread per process makes every MPI call (the *MPI thread*); other threads hand it
frame lists through a queue and read what it received from per-session inboxes. So the library
needs ``MPI_THREAD_SERIALIZED``, which is what we request (``MPI4PY_RC_THREAD_LEVEL`` still
overrides). On ranks > 0 the MPI thread is the main thread, which makes those ranks correct even
under ``MPI_THREAD_FUNNELED``; on rank 0 the main thread belongs to the user's program, so there a
lower level than SERIALIZED is only tolerated (DTM guide 6.5.3: calls never overlap) with a warning.

Wire format. A frame list travels as one *head* message (tag ``_TAG_HEAD``: session number, frame
sizes, and the small frames inline) followed by one raw MPI message per large frame (tag
``_TAG_DATA``), sent straight from the pickle-5 buffer's memory and received into a fresh
buffer, never re-pickled. MPI's non-overtaking rule per (source, tag) and a single receiving thread
keep frame lists in FIFO order between two ranks.

Sessions. Worker ranks outlive executors: each `DTMExecutor` on rank 0 opens a numbered session
(a START control message carrying the initializer and options), and its ``SHUTDOWN`` ends it.
Messages of ended sessions are dropped, so a late result can never reach a later executor. When
rank 0's program ends it sends EXIT(status); workers answer BYE, call ``MPI_Finalize`` and exit
with that status. Rank 0 calls ``MPI_Abort`` if a rank does not answer in time, so no rank is left
hanging. No collective operation is ever used (a rank that never arrives cannot block the others),
except MPI's own initialization: in the plain style a rank whose program ends before its first
executor therefore still joins it from an exit handler (`_at_program_end`).

A transport module: imports `base`, `worker`, `_lifecycle` (to end the runs when rank 0's program
ends), the scheduler's message kinds and the leaves; mpi4py only when a run starts.
"""

from __future__ import annotations

import atexit
import collections
import logging
import os
import pickle
import signal
import struct
import sys
import threading
import time
import traceback
from typing import Any, Callable, NoReturn, Sequence

from .. import _lifecycle, _serial
from .._scheduler import Kind
from . import worker
from .._errors import BrokenDTMExecutor
from .._log import brief_repr
from .base import Buffer, Received, TransportClosed, WorkerStart

log = logging.getLogger("dtm_executor")

_TAG_HEAD = 23_975  # both below 32767, the smallest MPI_TAG_UB the standard allows
_TAG_DATA = 23_976
_INLINE_MAX = 64 << 10  # frames up to this size are copied into the head message
_HEAD = struct.Struct("<II")  # session number (0: control), number of frames
_SEPARATE = 1 << 63  # flag on a frame size: the frame follows as its own message
_SPIN = 0.02  # seconds the MPI thread keeps calling MPI without sleeping while a send is pending
_IDLE_FRACTION = 0.01  # an idle rank's sleep between polls: this share of the time since the last message

_START, _EXIT, _BYE = "start", "exit", "bye"
_SHUTDOWN_FRAMES = pickle.dumps((int(Kind.SHUTDOWN),), 5)

#: Environment variables that give the world size under the common launchers (never imports mpi4py).
_SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE", "MPI_LOCALNRANKS")
_RANK_VARS = ("PMIX_RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        log.warning("ignoring %s=%s (not a number)", name, brief_repr(os.environ.get(name)))
        return default


def world_size_from_env(env: "os._Environ[str] | dict[str, str] | None" = None) -> int | None:
    """World size announced by an MPI launcher: ``None`` when not started by one, ``0`` when
    started by one that does not say how many ranks there are (then ask MPI)."""
    env = os.environ if env is None else env
    best = None
    for var in _SIZE_VARS:
        val = env.get(var)
        if val:
            try:
                best = max(best or 0, int(val))
            except ValueError:
                continue
    if best is not None:
        return best
    if any(env.get(v) for v in _RANK_VARS):
        for var in ("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS"):
            try:
                return int(env[var])
            except (KeyError, ValueError):
                continue
        return 0
    return None


def under_mpi_with_peers() -> bool:
    """True when this process is one of several MPI ranks (imports mpi4py only if the launcher's
    environment leaves the size unknown)."""
    n = world_size_from_env()
    if n is None:
        return False
    if n == 0:
        return _engine().size > 1
    return n > 1


def _import_mpi() -> Any:
    try:  # imported when used, never by `import dtm_executor`: importing mpi4py.MPI initializes MPI
        import mpi4py
    except ImportError as e:  # pragma: no cover - the mpi extra is missing
        raise ImportError(
            "the MPI transport needs mpi4py>=4: pip install 'dtm_executor[mpi]'"
        ) from e
    if "mpi4py.MPI" not in sys.modules:
        mpi4py.rc.thread_level = "serialized"  # all we need: one thread makes the calls
    from mpi4py import MPI

    if not MPI.Is_initialized():  # the user set mpi4py.rc.initialize = False
        MPI.Init_thread(MPI.THREAD_SERIALIZED)
    return MPI


class _Engine:
    """This process's MPI endpoint: the MPI thread's queues, inboxes and message format."""

    def __init__(self) -> None:
        self.MPI = MPI = _import_mpi()
        self.comm = MPI.COMM_WORLD
        self.rank: int = self.comm.Get_rank()
        self.size: int = self.comm.Get_size()
        self.provided: int = MPI.Query_thread()
        self.level_name = {
            MPI.THREAD_SINGLE: "single", MPI.THREAD_FUNNELED: "funneled",
            MPI.THREAD_SERIALIZED: "serialized", MPI.THREAD_MULTIPLE: "multiple",
        }.get(self.provided, str(self.provided))
        self._poll_max = max(1e-5, _env_float("DTM_EXECUTOR_MPI_POLL", 0.001))
        self._poll_hot = max(0.0, _env_float("DTM_EXECUTOR_MPI_HOT", 0.002))
        self._poll_idle = max(self._poll_max, _env_float("DTM_EXECUTOR_MPI_IDLE_POLL", 0.02))
        self._out: collections.deque[tuple[int, bytes, list[memoryview]]] = collections.deque()
        self._out_cv = threading.Condition(threading.Lock())
        self._in_cv = threading.Condition(threading.Lock())
        self._inbox: dict[int, collections.deque[Received]] = {}
        self._woken: set[int] = set()
        self._dead = 0  # sessions up to this number are over
        self._ctl_cv = threading.Condition(threading.Lock())
        self._ctl: collections.deque[tuple[int, tuple[Any, ...]]] = collections.deque()
        self._npending = 0
        self._stopping = False
        self._stop_deadline = 0.0
        self._stopped = threading.Event()
        self._abort_code: int | None = None
        self._thread: threading.Thread | None = None
        self._loop_thread: threading.Thread | None = None
        self.stats: collections.Counter[str] = collections.Counter()

    # -- any thread --------------------------------------------------------------------
    def send(self, dest: int, frames: Sequence[Buffer], session: int) -> None:
        if self._stopping:
            raise TransportClosed("the MPI transport is stopped")
        views = [memoryview(f).cast("B") for f in frames]
        sizes = []
        inline: list[memoryview] = []
        big: list[memoryview] = []
        for v in views:
            n = v.nbytes
            if n <= _INLINE_MAX:
                sizes.append(n)
                inline.append(v)
            else:
                sizes.append(n | _SEPARATE)
                big.append(v)
        head = b"".join([_HEAD.pack(session, len(views)), struct.pack(f"<{len(sizes)}Q", *sizes), *inline])
        with self._out_cv:
            self._out.append((dest, head, big))
            self._out_cv.notify()

    def send_control(self, dest: int, msg: tuple[Any, ...]) -> None:
        self.send(dest, [pickle.dumps(msg, 5)], 0)

    def recv(self, session: int, timeout: float | None) -> Received | None:
        cv = self._in_cv
        with cv:
            q = self._inbox.get(session)
            if q is None and session > self._dead:
                q = self._inbox[session] = collections.deque()
            end = None if timeout is None else time.monotonic() + timeout
            while True:
                if q:
                    return q.popleft()
                if session in self._woken:
                    self._woken.discard(session)
                    return None
                if end is None:
                    cv.wait()
                else:
                    left = end - time.monotonic()
                    if left <= 0:
                        return None
                    cv.wait(left)

    def wakeup(self, session: int) -> None:
        with self._in_cv:
            self._woken.add(session)
            self._in_cv.notify_all()

    def end_session(self, session: int) -> None:
        with self._in_cv:
            self._dead = max(self._dead, session)
            for s in [s for s in self._inbox if s <= self._dead]:
                del self._inbox[s]
            self._in_cv.notify_all()

    def recv_control(self, timeout: float | None = None) -> tuple[int, tuple[Any, ...]] | None:
        end = None if timeout is None else time.monotonic() + timeout
        with self._ctl_cv:
            while not self._ctl:
                if end is None:
                    self._ctl_cv.wait()
                else:
                    left = end - time.monotonic()
                    if left <= 0:
                        return None
                    self._ctl_cv.wait(left)
            return self._ctl.popleft()

    def flush(self, timeout: float) -> bool:
        """Wait until every queued message has been handed over to MPI and completed."""
        end = time.monotonic() + timeout
        delay = 1e-4
        while self._out or self._npending:
            if self._stopped.is_set() or time.monotonic() >= end:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 0.01)
        return True

    def start_thread(self) -> None:
        self._thread = threading.Thread(target=self.loop, name=f"dtm-mpi-{self.rank}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Let the MPI thread complete what is queued (within ``timeout``) and return."""
        with self._out_cv:
            if not self._stopping:
                self._stopping = True
                self._stop_deadline = time.monotonic() + timeout
            self._out_cv.notify()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout + 1.0)

    def abort(self, code: int) -> NoReturn:
        """``MPI_Abort`` the whole job, from the MPI thread if it runs (never returns)."""
        _flush_stdio()
        time.sleep(0.2)  # MPI_Abort kills at once: let the launcher forward what was printed
        code = code or 1
        looper = self._loop_thread
        if looper is not None and looper is not threading.current_thread() and not self._stopped.is_set():
            with self._out_cv:
                self._abort_code = code
                self._out_cv.notify()
            looper.join(3.0)
        self.comm.Abort(code)
        os._exit(code)  # pragma: no cover - Abort does not return

    # -- the MPI thread ------------------------------------------------------------------
    def loop(self, until: Callable[[], bool] | None = None) -> None:
        """Make every MPI call of this process until `stop` (runs in exactly one thread), or
        until ``until()`` (called after each round of MPI calls, in this thread) is true."""
        MPI = self.MPI
        comm = self.comm
        st = MPI.Status()
        reqs: list[Any] = []
        keep: list[Any] = []
        wait = 0.0
        last_busy = 0.0
        hot = self._poll_hot
        out_cv = self._out_cv
        poll_min = min(5e-5, self._poll_max)
        self._loop_thread = threading.current_thread()
        try:
            while True:
                busy = False
                if self._out:
                    with out_cv:
                        out = self._out
                        self._out = collections.deque()
                        self._npending = len(reqs) + len(out)  # flush() must not see a gap
                    for dest, head, big in out:
                        reqs.append(comm.Isend([head, MPI.BYTE], dest, _TAG_HEAD))
                        keep.append(head)
                        for b in big:
                            reqs.append(comm.Isend([b, MPI.BYTE], dest, _TAG_DATA))
                            keep.append(b)
                        self.stats["sent"] += 1
                    busy = True
                if reqs:
                    done = MPI.Request.Testsome(reqs)
                    if done:
                        if len(done) == len(reqs):
                            reqs, keep = [], []
                        else:
                            gone = set(done)
                            reqs = [r for i, r in enumerate(reqs) if i not in gone]
                            keep = [b for i, b in enumerate(keep) if i not in gone]
                        busy = True
                self._npending = len(reqs)
                for _ in range(64):
                    msg = comm.Improbe(MPI.ANY_SOURCE, _TAG_HEAD, st)
                    if msg is None:
                        break
                    src = st.Get_source()
                    buf = bytearray(st.Get_count(MPI.BYTE))
                    msg.Recv([buf, MPI.BYTE])
                    self._received(src, buf)
                    busy = True
                if self._abort_code is not None:
                    comm.Abort(self._abort_code)
                if until is not None and until():
                    return
                if self._stopping:
                    if not reqs and not self._out:
                        return
                    if time.monotonic() >= self._stop_deadline:
                        log.warning("rank %d: %d MPI send(s) still pending at exit", self.rank, len(reqs))
                        return
                if busy:
                    wait = 0.0
                    last_busy = time.monotonic()
                    continue
                # Nothing to do: MPI cannot wake us for an incoming message without spinning a
                # core (blocking calls busy-poll), so poll with a growing sleep; a local send
                # wakes us at once. Pending sends (large ones: small sends complete at once)
                # need MPI calls to progress: spin a little, then poll often.
                if reqs and time.monotonic() - last_busy < _SPIN:
                    os.sched_yield()
                    continue
                quiet = time.monotonic() - last_busy
                if reqs or quiet < hot:
                    wait = poll_min  # an answer is likely soon: keep latency low
                else:
                    # the longer the silence, the less likely an answer is due: a rank waiting for
                    # work polls less and less often (costing < 1 % of a core), and a message is
                    # noticed within 1 % of the time the rank has been idle (at most _poll_idle)
                    cap = min(self._poll_idle, max(self._poll_max, quiet * _IDLE_FRACTION))
                    wait = min(cap, max(poll_min, wait * 2))
                with out_cv:
                    if not self._out and not self._stopping and self._abort_code is None:
                        out_cv.wait(wait)
        except BaseException:  # pragma: no cover - an MPI error is fatal for the job
            log.critical("rank %d: the MPI thread failed", self.rank, exc_info=True)
            _flush_stdio()
            comm.Abort(1)
        finally:
            self._npending = 0
            self._stopped.set()
            with self._in_cv:
                self._in_cv.notify_all()

    def _received(self, src: int, buf: bytearray) -> None:
        MPI = self.MPI
        view = memoryview(buf)
        session, n = _HEAD.unpack_from(buf, 0)
        sizes = struct.unpack_from(f"<{n}Q", buf, _HEAD.size)
        pos = _HEAD.size + 8 * n
        frames: list[memoryview] = []
        for s in sizes:
            if s & _SEPARATE:
                data = bytearray(s & ~_SEPARATE)
                self.comm.Recv([data, MPI.BYTE], src, _TAG_DATA)
                frames.append(memoryview(data))
            else:
                frames.append(view[pos : pos + s])
                pos += s
        self.stats["received"] += 1
        if session == 0:
            self._control(src, pickle.loads(frames[0]))
            return
        with self._in_cv:
            if session <= self._dead:
                self.stats["dropped"] += 1
                return
            q = self._inbox.get(session)
            if q is None:
                q = self._inbox[session] = collections.deque()
            q.append((src, frames))
            self._in_cv.notify_all()

    def _control(self, src: int, msg: tuple[Any, ...]) -> None:
        kind = msg[0]
        if kind == _START:
            with self._in_cv:
                # A new session means the older ones are over, even if their SHUTDOWN was lost
                # (rank 0 tore its executor down without a grace period, e.g. on Ctrl-C).
                for s, q in self._inbox.items():
                    if s < msg[1]:
                        q.append((0, [memoryview(_SHUTDOWN_FRAMES)]))
                if msg[1] not in self._inbox:
                    self._inbox[msg[1]] = collections.deque()
                self._in_cv.notify_all()
        elif kind == _EXIT:
            # rank 0 is ending: stop whatever session is being served
            with self._in_cv:
                for q in self._inbox.values():
                    q.append((0, [memoryview(_SHUTDOWN_FRAMES)]))
                self._in_cv.notify_all()
        with self._ctl_cv:
            self._ctl.append((src, msg))
            self._ctl_cv.notify_all()


_ENGINE: list[_Engine] = []
_engine_lock = threading.Lock()


def _engine(thread: bool = True) -> _Engine:
    """This process's MPI endpoint, created on first use (rank 0 starts its MPI thread, unless
    ``thread`` is false: an exit handler may not start threads on some Pythons)."""
    with _engine_lock:
        if not _ENGINE:
            eng = _Engine()
            if eng.rank == 0 and thread:
                if eng.provided < eng.MPI.THREAD_SERIALIZED:
                    log.warning(
                        "MPI provides only thread level %r; rank 0 makes its MPI calls from one "
                        "helper thread, never two at once, which such libraries tolerate in "
                        "practice (DTM guide 6.5.3). Ask for 'serialized' if MPI misbehaves "
                        "(MPI4PY_RC_THREAD_LEVEL=serialized).", eng.level_name)
                eng.start_thread()
                atexit.register(_finish_rank0_at_exit)
            _ENGINE.append(eng)
        return _ENGINE[0]


class _Session:
    """The `Transport` a `Node` sees: one session's messages over the process's MPI endpoint."""

    def __init__(self, eng: _Engine, session: int) -> None:
        self._eng = eng
        self.session = session
        self.closed = False

    @property
    def rank(self) -> int:
        return self._eng.rank

    @property
    def size(self) -> int:
        return self._eng.size

    def send(self, dest: int, frames: Sequence[Buffer]) -> None:
        if self.closed:
            raise TransportClosed(f"MPI session {self.session} is closed")
        self._eng.send(dest, frames, self.session)

    def recv(self, timeout: float | None = None) -> Received | None:
        return self._eng.recv(self.session, timeout)

    def wakeup(self) -> None:
        self._eng.wakeup(self.session)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._eng.end_session(self.session)


class _State:
    sessions = 0
    active: "MPIPool | None" = None
    exit_code: int | None = None  # set by the excepthook (plain scripts) or the launcher
    launcher = False
    finished = False
    hook_installed = False
    watching = False  # the end-of-program handler of the plain style is registered


class MPIPool:
    """Pool factory for ``transport="mpi"``: all ranks of ``MPI.COMM_WORLD`` execute tasks.

    On rank 0 it opens a session and returns. On any other rank it never returns: the rank
    serves sessions until rank 0's program ends, then exits the process (see docs/mpi.md).
    ``max_workers`` is ignored: the number of ranks decides.
    """

    local_worker = True
    _ended = False

    def __init__(self, max_workers: int, start: WorkerStart, options: dict[str, Any] | None = None) -> None:
        eng = _engine()
        if eng.rank != 0:
            serve_forever(eng)  # does not return
        if _State.active is not None and not _State.active._ended:
            raise RuntimeError(
                "an MPI DTMExecutor is already running: its worker ranks serve one executor at a "
                "time; shut it down before creating another"
            )
        if _State.finished:
            raise RuntimeError("the MPI worker ranks have already been released (rank 0 is exiting)")
        _State.sessions += 1
        self.session = _State.sessions
        self._eng = eng
        self._ended = False
        self.transport = _Session(eng, self.session)
        self.workers = list(range(eng.size))
        self.procs: dict[int, Any] = {}
        if not _State.launcher:
            _install_excepthook()
        for r in range(1, eng.size):
            frames = start.frames(r, eng.size, workers=self.workers, import_main=False)
            eng.send_control(r, (_START, self.session, frames))
        _State.active = self
        worker.configure_process()  # rank 0 runs (deeply nested) tasks too
        try:
            initializer, initargs = pickle.loads(start.init_blob)
            if initializer is not None:
                initializer(*initargs)
        except BaseException as e:
            self.kill()
            raise BrokenDTMExecutor(f"the initializer failed on rank 0: {type(e).__name__}: {e}") from e

    def describe(self, rank: int) -> str:
        return f"worker rank {rank}"

    def exit_status(self, rank: int) -> int | None:
        return None  # a lost rank ends the whole MPI job; there is nothing to report

    def join(self, timeout: float) -> None:
        self._eng.flush(timeout)
        self._end()

    def kill(self) -> None:
        if not self._ended:
            for r in range(1, self._eng.size):
                try:
                    self.transport.send(r, [_SHUTDOWN_FRAMES])
                except Exception:  # noqa: BLE001 - the transport is already stopped
                    pass
            self._eng.flush(2.0)
        self._end()

    def _end(self) -> None:
        self._ended = True
        self.transport.close()


# -- worker ranks ------------------------------------------------------------------------

def serve_forever(eng: _Engine) -> NoReturn:
    """Run a worker rank: serve rank 0's sessions until EXIT, then finalize MPI and exit."""
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is rank 0's to handle
    except ValueError:  # not the main thread
        pass
    worker.configure_process()
    code = [0]
    t = threading.Thread(target=_serve_sessions, args=(eng, code), name=f"dtm-serve-{eng.rank}", daemon=True)
    t.start()
    eng.loop()  # this thread makes the MPI calls (the main thread: fine under FUNNELED too)
    t.join(1.0)
    _flush_stdio()
    try:
        eng.MPI.Finalize()
    except Exception:  # noqa: BLE001
        pass
    _exit_process(code[0])


def _exit_process(code: int) -> NoReturn:
    """End this worker rank without running any more of the user's program.

    Not ``os._exit``: MPICH's launcher sometimes takes a process that skipped the C library's
    exit handlers for a crashed one and kills the job. C ``exit`` runs them (and skips Python's
    own finalization, which could run code after ``DTMExecutor()`` in a plain script).
    """
    _flush_stdio()
    logging.shutdown()
    try:
        import ctypes

        ctypes.CDLL(None).exit(code)
    except Exception:  # noqa: BLE001 - no C library handle: the next best thing
        pass
    os._exit(code)


def _serve_sessions(eng: _Engine, code: list[int]) -> None:
    try:
        while True:
            item = eng.recv_control()
            assert item is not None
            _, msg = item
            if msg[0] == _START:
                _run_session(eng, msg[1], msg[2])
            elif msg[0] == _EXIT:
                code[0] = int(msg[1])
                break
    except BaseException:  # pragma: no cover - a bug: make it loud, do not hang the job
        log.critical("rank %d: serving failed", eng.rank, exc_info=True)
        eng.abort(1)
    _flush_stdio()
    try:
        eng.send_control(0, (_BYE,))
    except TransportClosed:
        pass
    eng.stop(5.0)


def _run_session(eng: _Engine, session: int, frames: list[bytes]) -> None:
    """Serve one executor of rank 0 (this rank imported the main module already); returns at its
    SHUTDOWN, or at once if the initializer failed (messages of an ended session are dropped)."""
    worker.serve(frames, lambda rank, size: _Session(eng, session), in_process=True)


# -- rank 0: the end of the program ------------------------------------------------------

def _install_excepthook() -> None:
    if _State.hook_installed:
        return
    _State.hook_installed = True
    previous = sys.excepthook

    def hook(tp: type[BaseException], value: BaseException, tb: Any) -> None:
        previous(tp, value, tb)  # the traceback, printed once, by rank 0 only
        _State.exit_code = 130 if issubclass(tp, KeyboardInterrupt) else 1

    sys.excepthook = hook


def _ignore_sigint() -> None:
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread
        pass


def _finish_rank0_at_exit() -> None:
    _ignore_sigint()  # the program is ending: a Ctrl-C now must not strand the other ranks
    code = _program_status()
    try:
        finish_rank0(code)
    except BaseException:  # noqa: BLE001 - whatever went wrong, no rank may be left behind
        if _ENGINE:
            _ENGINE[0].abort(code or 1)


def _program_status() -> int:
    """The status the interpreter exits with, as far as an exit handler can tell.

    The excepthook (installed with the first executor) records it; without it, an uncaught
    exception is still visible as ``sys.last_value`` (set when the interpreter prints it). A
    ``sys.exit(status)`` is invisible to exit handlers: it counts as 0.
    """
    if _State.exit_code is not None:
        return _State.exit_code
    last = getattr(sys, "last_value", None)
    if last is None:
        return 0
    return 130 if isinstance(last, KeyboardInterrupt) else 1


def finish_rank0(code: int) -> None:
    """Release the worker ranks: they exit with ``code``. Bounded: aborts the job on silence."""
    if _State.finished or not _ENGINE:
        return
    _State.finished = True
    eng = _ENGINE[0]
    if code == 0:
        _lifecycle.at_exit()  # shut down live executors the normal way (they wait for their tasks)
    # whatever is still pending can never finish once the worker ranks are gone: nothing may wait
    why = "the program on rank 0 ended" + (f" with status {code}" if code else "")
    for node, pool in _lifecycle.live_runs():
        if isinstance(pool, MPIPool) and node.broken is None:
            _lifecycle.fail(node, BrokenDTMExecutor(why))
    for r in range(1, eng.size):
        try:
            eng.send_control(r, (_EXIT, code))
        except TransportClosed:
            return
    timeout = _env_float("DTM_EXECUTOR_MPI_EXIT_TIMEOUT", 10.0)
    end = time.monotonic() + timeout
    waiting = set(range(1, eng.size))
    while waiting:
        item = eng.recv_control(max(0.0, end - time.monotonic()))
        if item is None:
            log.error("MPI rank(s) %s did not finish within %.0f s of the end of rank 0's program; "
                      "aborting the job", sorted(waiting), timeout)
            eng.abort(code or 1)
        src, msg = item
        if msg[0] == _BYE:
            waiting.discard(src)
    eng.stop(5.0)


# -- plain style: a rank whose program ends before it created an executor ------------------------

_WATCHDOG = """
import os, select, signal, sys
pid, timeout, message = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
if not select.select([sys.stdin], [], [], timeout)[0]:
    sys.stderr.write(message + "\\n")
    sys.stderr.flush()
    os.kill(pid, signal.SIGKILL)
"""


class _Watchdog:
    """Kill this process if it is still inside ``MPI_Init`` after ``timeout`` seconds.

    MPI initialization is collective and cannot be interrupted from Python (mpi4py holds the
    GIL through it), so the watchdog is a separate small process; its standard input closing
    (we are done, or dead) releases it. A rank killed by a signal makes MPI launchers end the
    whole job, which is the point.
    """

    def __init__(self, timeout: float, message: str) -> None:
        import subprocess

        self._proc: Any = None
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _WATCHDOG, str(os.getpid()), str(timeout), message],
                stdin=subprocess.PIPE, close_fds=True)
        except Exception as e:  # noqa: BLE001 - no way to start a process: wait unbounded
            log.warning("cannot start the MPI start-up watchdog: %s", e)

    def __enter__(self) -> "_Watchdog":
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            try:
                self._proc.stdin.close()
            except OSError:  # pragma: no cover
                pass
            try:
                self._proc.wait(5.0)
            except Exception:  # noqa: BLE001 - it exits on its own once it sees the EOF
                pass


def watch_rank_exit() -> None:
    """Under an MPI launcher, make sure no rank is left waiting for one whose program ended.

    Called when the package is imported (it reads the environment only; mpi4py is not imported).
    In the plain style (``mpiexec -n N python script.py``) a rank waits for the others inside
    MPI when it creates its first executor; a rank whose program ends first must still take part
    (see `_at_program_end`). The launcher style initializes MPI on every rank before the script
    runs and ends the run itself.
    """
    if _State.watching:
        return
    n = world_size_from_env()
    if n is None or n == 1:
        return
    _State.watching = True
    atexit.register(_at_program_end)


def _at_program_end() -> None:
    """The plain style's end of a rank's program before any MPI executor did it (exit handler).

    Every rank that imported dtm_executor joins MPI here (MPI initialization is collective: the
    ranks already waiting in their ``DTMExecutor()`` cannot get out of it otherwise), then:

    * rank 0 releases the other ranks with its status: they exit with it;
    * a rank > 0 whose program ended normally waits for that (`_wait_for_rank0`);
    * a rank > 0 whose program failed ends the whole job (``MPI_Abort``).

    Joining is bounded by ``DTM_EXECUTOR_MPI_JOIN_TIMEOUT`` seconds (5; 0 disables all this) for
    rank 0 and for a failed rank: if the others do not join in time, a watchdog kills this
    process, which makes the MPI launcher end the job. Only a rank > 0 whose program ended
    normally waits for rank 0 without limit, as it would in ``DTMExecutor()``.
    """
    if _State.launcher or _State.finished:
        return
    if _ENGINE and _ENGINE[0].rank == 0:
        return  # _finish_rank0_at_exit (registered later, so run earlier) has released the ranks
    timeout = _env_float("DTM_EXECUTOR_MPI_JOIN_TIMEOUT", 5.0)
    if timeout <= 0:
        return
    _ignore_sigint()  # the program has ended: a Ctrl-C now must not strand the other ranks
    code = _program_status()
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is not None and mpi.Is_finalized():
        return  # the program finalized MPI itself: nothing can be said to the other ranks
    rank = _rank_from_env()
    try:
        if _ENGINE or (mpi is not None and mpi.Is_initialized()):
            eng = _engine(thread=False)
        elif rank is not None and rank != 0 and code == 0:
            eng = _engine(thread=False)  # as in DTMExecutor(): wait for rank 0 however long it takes
        else:
            who = "rank 0" if rank == 0 else f"rank {rank if rank is not None else '?'}"
            why = ("the other ranks did not join MPI" if rank == 0 else "rank 0 did not join MPI")
            msg = (f"dtm_executor: MPI {who} ended (status {code}) before creating an executor, and "
                   f"{why} within {timeout:g} s (DTM_EXECUTOR_MPI_JOIN_TIMEOUT); ending the job")
            with _Watchdog(timeout, msg):
                eng = _engine(thread=False)
    except Exception:  # noqa: BLE001 - MPI itself failed: nothing more can be done from here
        log.exception("MPI rank %s could not join the other ranks at the end of its program", rank)
        return
    if eng.size == 1:
        return
    if eng.rank == 0:
        _release_from_exit_handler(eng, code)
    elif code != 0:
        log.error("MPI rank %d: the program failed (status %d) before creating an executor; "
                  "ending the job", eng.rank, code)
        eng.abort(code)
    else:
        _wait_for_rank0(eng)


# Exit handlers may not start threads (Python 3.12.0 and 3.12.1 refuse), so the two functions below
# make the MPI calls from the calling thread: `_Engine.loop` runs there until their condition holds.

def _release_from_exit_handler(eng: _Engine, code: int) -> None:
    """`finish_rank0` for an engine without its MPI thread: EXIT to every rank, wait for BYE."""
    _State.finished = True
    for r in range(1, eng.size):
        eng.send_control(r, (_EXIT, code))
    timeout = _env_float("DTM_EXECUTOR_MPI_EXIT_TIMEOUT", 10.0)
    end = time.monotonic() + timeout
    waiting = set(range(1, eng.size))

    def done() -> bool:
        while (item := eng.recv_control(0)) is not None:
            if item[1][0] == _BYE:
                waiting.discard(item[0])
        return not waiting or time.monotonic() >= end

    eng.loop(done)
    if waiting:
        log.error("MPI rank(s) %s did not finish within %.0f s of the end of rank 0's program; "
                  "aborting the job", sorted(waiting), timeout)
        eng.abort(code or 1)
    _flush_stdio()
    if not eng.MPI.Is_finalized():
        eng.MPI.Finalize()


def _wait_for_rank0(eng: _Engine) -> NoReturn:
    """A worker rank whose program ended before its first executor: wait for rank 0's EXIT.

    It does not serve: an executor that rank 0 opens meanwhile learns at once that this rank
    cannot take part (every rank must reach ``DTMExecutor()`` in the plain style).
    """
    why = ("its program ended before it created an executor (in `mpiexec -n N python script.py` "
           "every rank must reach DTMExecutor(); see docs/mpi.md)")
    code: list[int] = []

    def done() -> bool:
        while (item := eng.recv_control(0)) is not None:
            msg = item[1]
            if msg[0] == _START:
                eng.send(0, worker.initfail(why), msg[1])
                eng.end_session(msg[1])
            elif msg[0] == _EXIT and not code:
                code.append(int(msg[1]))
                eng.send_control(0, (_BYE,))
        return bool(code) and not eng._out and eng._npending == 0

    eng.loop(done)
    _flush_stdio()
    try:
        eng.MPI.Finalize()
    except Exception:  # noqa: BLE001
        pass
    _exit_process(code[0])


def _rank_from_env() -> int | None:
    for var in _RANK_VARS:
        try:
            return int(os.environ[var])
        except (KeyError, ValueError):
            continue
    return None


def _flush_stdio() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001
            pass


# -- the launcher's MPI mode ---------------------------------------------------------------

def launch(script: Any, run_main: Any, import_main: Any = None) -> int:
    """``mpiexec -n N python -m dtm_executor script.py``: rank 0 runs the script as ``__main__``
    (``run_main(script)`` returns its exit status); the other ranks import it as ``__mp_main__``
    (aliased as ``__main__``, like multiprocessing's spawn; ``import_main()`` when given, for
    ``-m module``) and serve tasks."""
    eng = _engine()
    if eng.rank == 0:
        _State.launcher = True
        code = 1
        try:
            code = run_main(script)
        finally:
            _ignore_sigint()  # the script has ended: a Ctrl-C now must not strand the other ranks
            finish_rank0(code)
        return code
    import multiprocessing.spawn as mpspawn

    try:
        with worker.importing_main():
            if import_main is not None:
                import_main()
            else:
                mpspawn.import_main_path(script)
    except BaseException:  # noqa: BLE001 - this rank cannot serve: stop the job loudly
        sys.stderr.write(f"dtm_executor: MPI rank {eng.rank} could not import {script}:\n")
        traceback.print_exc()
        eng.abort(1)
    _serial.refresh_main_policy()
    serve_forever(eng)
    return 0  # pragma: no cover - serve_forever exits the process

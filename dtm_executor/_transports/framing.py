"""One wire format for the socket transports (local and TCP), and the star topology both use.

Wire format: a message (one frame list) is ``<i peer><I count>``, ``count`` x ``<Q length>``, then
the bodies. ``peer`` is the destination when a worker sends and the source when rank 0 forwards.
Frame lists keep pickle-5 out-of-band buffers separate, so large arrays are written from their
own memory and read into a buffer the unpickler uses without a copy. A message has at most
`MAX_FRAMES` frames and ``max_bytes`` bytes (checked before anything is allocated for it).
Between local processes a frame of `SHM_MIN` bytes or more travels as a memfd passed with the
header (its length carries the `_FD_FRAME` flag).

Star: rank 0 holds one channel per worker (`StarHub`) and forwards frames between workers
without unpickling them (`_Forwarder`, a thread of its own, so that receiving never waits on a
slow destination); a worker (`StarWorker`) holds one channel, to rank 0. A channel has ``sock``,
``send(peer, frames)``, ``pump()``, ``mid_message``, ``buffered``, ``backlog`` and ``close()``:
`LocalChannel` here (blocking reads from a process we started), ``TcpChannel`` (non-blocking, TLS).

Imports `base` and the leaf `_log`.
"""

from __future__ import annotations

import array
import collections
import errno
import logging
import mmap
import os
import selectors
import socket
import struct
import threading
from typing import Any, Callable, Protocol, Sequence

from .._log import brief_exc
from .base import Buffer, Received

log = logging.getLogger("dtm_executor")

_HDR = struct.Struct("<iI")  # peer rank, number of frames
_LEN = struct.Struct("<Q")
_FD_FRAME = 1 << 63  # length flag: this frame travels as a memory file descriptor
#: frames at least this big go through shared memory on local channels (one copy, not three)
SHM_MIN = 1 << 20
_MAX_FDS = 64

#: Cap on the number of frames in one message (a pickle plus its out-of-band buffers).
MAX_FRAMES = 1 << 20
#: Default cap on one message (all frames of one send), in bytes, between hosts (``max_frame_bytes``).
DEFAULT_MAX_FRAME_BYTES = 1 << 32
#: The cap between local processes: none in practice (the peer is a process we started).
LOCAL_MAX_BYTES = 1 << 40
_DIRECT = 1 << 16  # bodies with at least this much left are read straight into place


class FrameError(Exception):
    """A peer sent bytes that are not a valid frame list."""


def check_count(count: int, max_frames: int = MAX_FRAMES) -> None:
    if count > max_frames:
        raise FrameError(f"a message of {count} frames exceeds the limit of {max_frames}")


def check_sizes(sizes: Sequence[int], max_bytes: int) -> int:
    """The message's size in bytes; `FrameError` above ``max_bytes``."""
    total = sum(s & ~_FD_FRAME for s in sizes)
    if total > max_bytes:
        raise FrameError(f"a message of {total} bytes exceeds the limit of {max_bytes}")
    return total


class FrameParser:
    """Incremental parser of frame lists: fed arbitrary chunks, yields complete messages.

    Lengths are checked against the caps before anything is allocated for them; a violation
    raises `FrameError` and the connection must be dropped (the stream cannot be resynchronised).
    """

    __slots__ = ("max_bytes", "max_frames", "_state", "_buf", "_have", "_peer", "_sizes", "_body", "_pos")

    def __init__(self, max_bytes: int = DEFAULT_MAX_FRAME_BYTES, max_frames: int = MAX_FRAMES) -> None:
        self.max_bytes = max_bytes
        self.max_frames = max_frames
        self._state = 0  # 0: header, 1: length table, 2: bodies
        self._buf = bytearray(_HDR.size)
        self._have = 0
        self._peer = 0
        self._sizes: list[int] = []
        self._body = bytearray()
        self._pos = 0

    @property
    def mid_message(self) -> bool:
        return self._state != 0 or self._have != 0

    def feed(self, data: Buffer) -> list[tuple[int, list[memoryview]]]:
        view = memoryview(data).cast("B")
        out: list[tuple[int, list[memoryview]]] = []
        i, n = 0, view.nbytes
        while i < n:
            if self._state == 2:
                take = min(n - i, len(self._body) - self._pos)
                self._body[self._pos : self._pos + take] = view[i : i + take]
                self._pos += take
                i += take
                if self._pos == len(self._body):
                    out.append(self._emit())
                continue
            need = len(self._buf) - self._have
            take = min(need, n - i)
            self._buf[self._have : self._have + take] = view[i : i + take]
            self._have += take
            i += take
            if self._have == len(self._buf):
                done = self._header_done() if self._state == 0 else self._sizes_done()
                if done:
                    out.append(self._emit())
        return out

    def direct(self) -> memoryview | None:
        """Where to read the rest of a large body straight into (None: use `feed`)."""
        if self._state == 2 and len(self._body) - self._pos >= _DIRECT:
            return memoryview(self._body)[self._pos :]
        return None

    def advance(self, n: int) -> list[tuple[int, list[memoryview]]]:
        """Account for ``n`` bytes written into the view `direct` returned."""
        self._pos += n
        if self._pos == len(self._body):
            return [self._emit()]
        return []

    def _header_done(self) -> bool:
        self._peer, count = _HDR.unpack(self._buf)
        check_count(count, self.max_frames)
        self._sizes = []
        if count == 0:
            self._body = bytearray()
            return True
        self._state = 1
        self._buf = bytearray(_LEN.size * count)
        self._have = 0
        return False

    def _sizes_done(self) -> bool:
        sizes = [s for (s,) in _LEN.iter_unpack(self._buf)]
        if any(s & _FD_FRAME for s in sizes):
            raise FrameError("a shared-memory frame on a connection that cannot pass one")
        total = check_sizes(sizes, self.max_bytes)
        self._sizes = sizes
        self._body = bytearray(total)
        self._pos = 0
        if total == 0:
            return True
        self._state = 2
        return False

    def _emit(self) -> tuple[int, list[memoryview]]:
        view = memoryview(self._body)
        frames = []
        pos = 0
        for s in self._sizes:
            frames.append(view[pos : pos + s])
            pos += s
        peer = self._peer
        self._state = 0
        self._buf = bytearray(_HDR.size)
        self._have = 0
        self._sizes = []
        self._body = bytearray()
        self._pos = 0
        return peer, frames


def encode(peer: int, frames: Sequence[Buffer]) -> list[memoryview]:
    """The wire form of one message, as a list of views (the bodies are not copied)."""
    views = [memoryview(f).cast("B") for f in frames]
    head = _header(peer, [v.nbytes for v in views])
    return [memoryview(head)] + [v for v in views if v.nbytes]


# -- local channels ----------------------------------------------------------------------------
class LocalChannel:
    """A local stream socket (one end of a socket pair) carrying frame lists. Reads are blocking
    and whole (the peer is a process we started), sends serialised by a lock; large frames go in
    a memfd (one copy, not three): the sender copies once into it, the receiver maps it
    (copy-on-write) and unpickles in place."""

    __slots__ = ("sock", "_lock", "max_bytes", "closed", "pass_fds")

    mid_message = False  # reads are whole: never between two parts of a message
    buffered = False  # nothing is read ahead: the socket says when a message is there
    backlog: Sequence[tuple[int, list[memoryview]]] = ()

    def __init__(self, sock: socket.socket, max_bytes: int = LOCAL_MAX_BYTES, pass_fds: bool = False) -> None:
        self.sock = sock
        self._lock = threading.Lock()
        self.max_bytes = max_bytes
        self.closed = False
        self.pass_fds = pass_fds and hasattr(os, "memfd_create") and sock.family == socket.AF_UNIX
        sock.setblocking(True)
        for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, 4 << 20)
            except OSError:  # pragma: no cover - platform limits
                pass

    def send(self, peer: int, frames: Sequence[Buffer]) -> None:
        views = [memoryview(f).cast("B") for f in frames]
        sizes: list[int] = []
        fds: list[int] = []
        body: list[memoryview] = []
        try:
            for v in views:
                if self.pass_fds and v.nbytes >= SHM_MIN and len(fds) < _MAX_FDS:
                    fds.append(_to_memfd(v))
                    sizes.append(_FD_FRAME | v.nbytes)
                else:
                    sizes.append(v.nbytes)
                    if v.nbytes:
                        body.append(v)
            head = memoryview(_header(peer, sizes))
            with self._lock:
                if self.closed:
                    raise OSError("channel closed")
                if fds:
                    sent = self.sock.sendmsg(
                        [head], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
                    )
                    _sendmsg_all(self.sock, [head[sent:]] + body)
                else:
                    _sendmsg_all(self.sock, [head] + body)
        finally:
            for fd in fds:
                os.close(fd)

    def recv(self) -> tuple[int, list[memoryview]]:
        """Block until one complete frame list has arrived; EOF raises `EOFError`."""
        fds: list[int] = []
        if self.pass_fds:
            head, fds = _recv_exact_fds(self.sock, _HDR.size)
        else:
            head = _recv_exact(self.sock, _HDR.size)
        try:
            peer, n = _HDR.unpack(head)
            check_count(n)
            sizes_raw = _recv_exact(self.sock, _LEN.size * n)
            sizes = [s for (s,) in _LEN.iter_unpack(sizes_raw)]
            check_sizes(sizes, self.max_bytes)
            if sum(1 for s in sizes if s & _FD_FRAME) != len(fds):
                raise FrameError("shared-memory frames and passed descriptors do not match")
            total = sum(s for s in sizes if not s & _FD_FRAME)
            buf = bytearray(total)
            if total:
                _recv_into_exact(self.sock, memoryview(buf))
            view = memoryview(buf)
            frames = []
            pos = 0
            fd_iter = iter(fds)
            for s in sizes:
                if s & _FD_FRAME:
                    size = s & ~_FD_FRAME
                    frames.append(memoryview(mmap.mmap(next(fd_iter), size, flags=mmap.MAP_PRIVATE)))
                else:
                    frames.append(view[pos : pos + s])
                    pos += s
            return peer, frames
        finally:
            for fd in fds:
                os.close(fd)

    def pump(self) -> tuple[list[tuple[int, list[memoryview]]], BaseException | None, bool]:
        """The message waiting on the socket (call when it is readable), as `TcpChannel.pump`:
        (messages, the error that ends the connection, more?)."""
        try:
            return [self.recv()], None, False
        except (EOFError, OSError, FrameError) as e:
            return [], e, False

    def close(self) -> None:
        self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def _header(peer: int, sizes: Sequence[int]) -> bytes:
    return _HDR.pack(peer, len(sizes)) + b"".join(_LEN.pack(s) for s in sizes)


def _sendmsg_all(sock: socket.socket, views: list[memoryview]) -> None:
    pending = Pending(views)
    while pending:
        pending.advance(sock.sendmsg(pending.head()))


class Pending:
    """Views still to write with ``sendmsg``, consumed as the kernel takes bytes."""

    __slots__ = ("views", "i")

    def __init__(self, views: list[memoryview]) -> None:
        self.views = [v for v in views if v.nbytes]  # an empty view: sendmsg returns 0 forever
        self.i = 0

    def __bool__(self) -> bool:
        return self.i < len(self.views)

    def head(self) -> list[memoryview]:
        return self.views[self.i : self.i + 512]  # IOV_MAX is 1024 on Linux

    def advance(self, sent: int) -> None:
        views = self.views
        while sent:
            first = views[self.i]
            if sent >= first.nbytes:
                sent -= first.nbytes
                self.i += 1
            else:
                views[self.i] = first[sent:]
                sent = 0


def _to_memfd(view: memoryview) -> int:
    fd = os.memfd_create("dtm-frame", os.MFD_CLOEXEC)
    try:
        done = 0
        while done < view.nbytes:
            done += os.write(fd, view[done:])
    except BaseException:
        os.close(fd)
        raise
    return fd


def _recv_exact_fds(sock: socket.socket, n: int) -> tuple[bytes, list[int]]:
    """Read ``n`` bytes and the descriptors passed along with them."""
    fds: list[int] = []
    buf = b""
    while len(buf) < n:
        data, anc, _flags, _addr = sock.recvmsg(n - len(buf), socket.CMSG_SPACE(_MAX_FDS * 4))
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                arr = array.array("i")
                arr.frombytes(payload[: len(payload) - len(payload) % arr.itemsize])
                fds.extend(arr)
        if not data:
            for fd in fds:
                os.close(fd)
            raise EOFError("peer closed the connection")
        buf += data
    return buf, fds


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    if n == 0:
        return b""
    data = sock.recv(n, socket.MSG_WAITALL)
    if len(data) == n:
        return data
    if not data:
        raise EOFError("peer closed the connection")
    buf = bytearray(data)
    while len(buf) < n:
        more = sock.recv(n - len(buf))
        if not more:
            raise EOFError("peer closed the connection mid-frame")
        buf += more
    return bytes(buf)


def _recv_into_exact(sock: socket.socket, view: memoryview) -> None:
    while view.nbytes:
        got = sock.recv_into(view, min(view.nbytes, 1 << 30))
        if not got:
            raise EOFError("peer closed the connection mid-frame")
        view = view[got:]


# -- the star topology ---------------------------------------------------------------------------
class _Conn(Protocol):
    """A channel as the star sees it (`LocalChannel`, ``TcpChannel``)."""

    @property
    def sock(self) -> socket.socket: ...

    @property
    def mid_message(self) -> bool:
        """Whether the connection is inside a message (its end then is not a clean close)."""
        ...

    @property
    def buffered(self) -> bool:
        """Whether input may wait in user space (TLS, a parser): pump without select's word."""
        ...

    @property
    def backlog(self) -> Any:
        """Messages read before a transport took the channel over."""
        ...

    def send(self, peer: int, frames: Sequence[Buffer]) -> None: ...

    def pump(self) -> tuple[list[tuple[int, list[memoryview]]], BaseException | None, bool]: ...

    def close(self) -> None: ...


class StarHub:
    """Rank 0's end of a star: one channel per worker, a selector over them, and a thread that
    forwards frames between workers.

    A message for a rank outside the run is a protocol error, like a malformed frame: the
    sender's connection is dropped (its loss reported as ``(rank, None)``) and the drop logged.
    With ``log_losses`` (TCP), a connection that ends any other way is logged too (at DEBUG when
    the peer closed it between messages); without (local), the executor reports the loss with
    the process's exit status instead.
    """

    def __init__(self, size: int, *, log_losses: bool = True) -> None:
        self._size = size
        self._log_losses = log_losses
        self.channels: dict[int, _Conn] = {}
        self._new: collections.deque[tuple[int, _Conn]] = collections.deque()
        self._sel = selectors.DefaultSelector()
        self._waker = Waker()
        self._sel.register(self._waker.r, selectors.EVENT_READ, None)
        self._pending: collections.deque[Received] = collections.deque()
        self._hot: set[int] = set()
        self._closed = False
        self._fwd = _Forwarder(self.channels.get, (OSError, FrameError))

    @property
    def rank(self) -> int:
        return 0

    @property
    def size(self) -> int:
        return self._size

    def add(self, rank: int, ch: _Conn) -> None:
        """Start serving a worker's channel (safe from any thread)."""
        self._size = max(self._size, rank + 1)
        self.channels[rank] = ch
        self._new.append((rank, ch))
        self._waker.wake()

    def send(self, dest: int, frames: Sequence[Buffer]) -> None:
        ch = self.channels.get(dest)
        if ch is None:
            raise OSError(errno.ENOTCONN, f"no connection to rank {dest}")
        ch.send(0, frames)

    def recv(self, timeout: float | None = None) -> Received | None:
        if self._pending:
            return self._pending.popleft()
        if self._closed:
            return None
        while self._new:
            rank, ch = self._new.popleft()
            if self.channels.get(rank) is ch:
                self._sel.register(ch.sock, selectors.EVENT_READ, rank)
                if ch.buffered:
                    self._hot.add(rank)  # bytes may have arrived before registration
        try:
            events = self._sel.select(0 if self._hot else timeout)
        except (OSError, ValueError):
            return None
        ready = set(self._hot)
        for key, _ in events:
            if key.data is None:
                self._waker.drain()
            else:
                ready.add(key.data)
        for rank in ready:
            self._pump(rank)
        return self._pending.popleft() if self._pending else None

    def _pump(self, rank: int) -> None:
        ch = self.channels.get(rank)
        if ch is None:
            self._hot.discard(rank)
            return
        msgs, err, more = ch.pump()
        for dest, frames in msgs:
            if dest == 0:
                self._pending.append((rank, frames))
            elif 0 < dest < self._size:
                self._fwd.put(dest, rank, frames)
            else:
                err = FrameError(f"rank {rank} addressed a message to rank {dest}")
                break
        if more and err is None:
            self._hot.add(rank)
        else:
            self._hot.discard(rank)
        if err is not None:
            if isinstance(err, FrameError) or self._log_losses:
                if isinstance(err, EOFError) and not ch.mid_message:
                    log.debug("rank %d closed its connection", rank)
                else:
                    log.warning("dropping the connection of rank %d: %s", rank, brief_exc(err))
            self._drop(rank)
            self._pending.append((rank, None))

    def _drop(self, rank: int) -> None:
        ch = self.channels.pop(rank, None)
        self._hot.discard(rank)
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
        while self._new:
            self._new.popleft()[1].close()
        try:
            self._sel.close()
        except Exception:  # noqa: BLE001
            pass
        self._waker.close()


class StarWorker:
    """A worker's end of a star: everything goes through its one channel to rank 0 (which
    forwards what is for other workers). Rank 0's loss is ``(0, None)``; with ``log_losses``
    (TCP) a connection that fails other than by a close is logged."""

    def __init__(self, ch: _Conn, rank: int, size: int, *, log_losses: bool = True) -> None:
        self._ch = ch
        self._rank = rank
        self._size = size
        self._log_losses = log_losses
        self._waker = Waker()
        self._sel = selectors.DefaultSelector()
        self._sel.register(ch.sock, selectors.EVENT_READ, 1)
        self._sel.register(self._waker.r, selectors.EVENT_READ, None)
        self._queue: collections.deque[Received] = collections.deque(ch.backlog)
        if ch.backlog:
            ch.backlog.clear()
        self._hot = False
        self._lost = False

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def size(self) -> int:
        return self._size

    def send(self, dest: int, frames: Sequence[Buffer]) -> None:
        self._ch.send(dest, frames)

    def recv(self, timeout: float | None = None) -> Received | None:
        if self._queue:
            return self._queue.popleft()
        if self._lost:
            return (0, None)
        try:
            events = self._sel.select(0 if self._hot else timeout)
        except (OSError, ValueError):
            self._lost = True
            return (0, None)
        readable = self._hot
        for key, _ in events:
            if key.data is None:
                self._waker.drain()
            else:
                readable = True
        if readable:
            msgs, err, more = self._ch.pump()
            self._queue.extend(msgs)
            self._hot = more and err is None
            if err is not None:
                if self._log_losses and not isinstance(err, EOFError):
                    log.warning("connection to rank 0 failed: %s", brief_exc(err))
                self._lost = True
                self._queue.append((0, None))
        return self._queue.popleft() if self._queue else None

    def wakeup(self) -> None:
        self._waker.wake()

    def close(self) -> None:
        self._ch.close()
        self._waker.close()


class _Forwarder:
    """Rank 0's relay in a star topology: frames from one worker to another, sent by a thread of
    its own so that the receiving thread never waits on a slow destination."""

    def __init__(self, channel_of: Callable[[int], Any], errors: tuple[type[BaseException], ...]) -> None:
        self._channel_of = channel_of
        self._errors = errors
        self._q: collections.deque[tuple[int, int, list[memoryview]]] = collections.deque()
        self._cv = threading.Condition()
        self._closed = False
        threading.Thread(target=self._loop, name="dtm-forward", daemon=True).start()

    def put(self, dest: int, src: int, frames: list[memoryview]) -> None:
        with self._cv:
            self._q.append((dest, src, frames))
            self._cv.notify()

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._q and not self._closed:
                    self._cv.wait()
                if self._closed:
                    return
                dest, src, frames = self._q.popleft()
            ch = self._channel_of(dest)
            if ch is None:
                continue
            try:
                ch.send(src, frames)
            except self._errors:
                pass  # the loss of dest is reported by recv


class Waker:
    """A self-pipe that makes a thread blocked in `select` return."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe()
        os.set_blocking(self.r, False)
        os.set_blocking(self.w, False)
        self._armed = False

    def wake(self) -> None:
        if self._armed:
            return
        self._armed = True
        try:
            os.write(self.w, b"x")
        except (BlockingIOError, OSError):
            pass

    def drain(self) -> None:
        # Read first, then disarm: a wake() in between skips its write, but the caller looks at
        # the shared state after draining, so it sees what that wake() announced. The other
        # order can leave the flag armed with an empty pipe, and every later wake() is lost.
        try:
            while os.read(self.r, 4096):
                pass
        except (BlockingIOError, OSError):
            pass
        self._armed = False

    def close(self) -> None:
        # once only, and no write afterwards: by then the numbers may be another file's
        fds = (self.r, self.w)
        self._armed = True
        self.r = self.w = -1
        for fd in fds:
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass

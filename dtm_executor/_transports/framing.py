"""The byte-moving layer: a `Transport` protocol and socket framing shared by implementations.

The scheduler talks in messages between ranks; a transport only moves lists of byte frames
between ranks. Frame lists keep pickle-5 out-of-band buffers separate so that large arrays are
written from their own memory and read into a buffer the unpickler can use without a copy.
"""

from __future__ import annotations

import array
import collections
import mmap
import os
import select
import selectors
import socket
import struct
import threading
from typing import Any, Callable, Protocol, Sequence, Union, runtime_checkable

Buffer = Union[bytes, bytearray, memoryview]

#: Frames received from a peer, or ``None`` when the connection to that peer was lost.
Received = tuple[int, Union[list[memoryview], None]]

_HDR = struct.Struct("<iI")  # peer rank, number of frames
_LEN = struct.Struct("<Q")
_FD_FRAME = 1 << 63  # length flag: this frame travels as a memory file descriptor
#: frames at least this big go through shared memory on local channels (one copy, not three)
SHM_MIN = 1 << 20
_MAX_FDS = 64


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


class FrameError(Exception):
    """A peer sent bytes that are not a valid frame list."""


class _Channel:
    """One stream socket carrying length-prefixed frame lists; sends are serialised by a lock."""

    __slots__ = ("sock", "_lock", "max_frame", "closed", "pass_fds")

    def __init__(self, sock: socket.socket, max_frame: int = 1 << 40, pass_fds: bool = False) -> None:
        self.sock = sock
        self._lock = threading.Lock()
        self.max_frame = max_frame
        self.closed = False
        # Large frames between local processes go in a memfd passed with SCM_RIGHTS: the sender
        # copies once into it, the receiver maps it (copy-on-write) and unpickles in place.
        self.pass_fds = pass_fds and hasattr(os, "memfd_create") and sock.family == socket.AF_UNIX
        sock.setblocking(True)
        for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, 4 << 20)
            except OSError:  # pragma: no cover - platform limits
                pass

    def send(self, peer: int, frames: Sequence[Buffer]) -> None:
        parts: list[Buffer] = [_HDR.pack(peer, len(frames))]
        views = [memoryview(f).cast("B") for f in frames]
        fds: list[int] = []
        body: list[memoryview] = []
        try:
            for v in views:
                if self.pass_fds and v.nbytes >= SHM_MIN and len(fds) < _MAX_FDS:
                    fds.append(_to_memfd(v))
                    parts.append(_LEN.pack(_FD_FRAME | v.nbytes))
                else:
                    parts.append(_LEN.pack(v.nbytes))
                    if v.nbytes:
                        body.append(v)
            head = memoryview(b"".join(parts))  # type: ignore[arg-type]
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
            if n > 1 << 20:
                raise FrameError(f"frame count {n} exceeds the limit")
            sizes_raw = _recv_exact(self.sock, _LEN.size * n)
            sizes = [s for (s,) in _LEN.iter_unpack(sizes_raw)]
            inline = [s for s in sizes if not s & _FD_FRAME]
            if any(s & ~_FD_FRAME > self.max_frame for s in sizes):
                raise FrameError(f"frame of {max(sizes) & ~_FD_FRAME} bytes exceeds the limit of {self.max_frame}")
            if sum(1 for s in sizes if s & _FD_FRAME) != len(fds):
                raise FrameError("shared-memory frames and passed descriptors do not match")
            total = sum(inline)
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

    def close(self) -> None:
        self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def _sendmsg_all(sock: socket.socket, views: list[memoryview]) -> None:
    pending = _Pending(views)
    while pending:
        pending.advance(sock.sendmsg(pending.head()))


class _Pending:
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


class _WorkerEnd:
    """What a worker's end of a star topology shares across transports: one channel to rank 0
    (which routes frames for other ranks), a waker, and a selector over both. Subclasses read."""

    def __init__(self, ch: Any, rank: int, size: int) -> None:
        self._ch = ch
        self._rank = rank
        self._size = size
        self._waker = _Waker()
        self._sel = selectors.DefaultSelector()
        self._sel.register(ch.sock, selectors.EVENT_READ, 1)
        self._sel.register(self._waker.r, selectors.EVENT_READ, None)

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def size(self) -> int:
        return self._size

    def send(self, dest: int, frames: Sequence[Buffer]) -> None:
        self._ch.send(dest, frames)

    def wakeup(self) -> None:
        self._waker.wake()

    def close(self) -> None:
        self._ch.close()
        self._waker.close()


class _Waker:
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


def _wait_readable(fds: list[int], timeout: float | None) -> list[int]:
    try:
        r, _, _ = select.select(fds, [], [], timeout)
    except (OSError, ValueError):
        return []
    return r

"""The byte-moving layer: a `Transport` protocol and socket framing shared by implementations.

The scheduler talks in messages between ranks; a transport only moves lists of byte frames
between ranks. Frame lists keep pickle-5 out-of-band buffers separate so that large arrays are
written from their own memory and read into a buffer the unpickler can use without a copy.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import threading
from typing import Protocol, Sequence, Union, runtime_checkable

Buffer = Union[bytes, bytearray, memoryview]

#: Frames received from a peer, or ``None`` when the connection to that peer was lost.
Received = tuple[int, Union[list[memoryview], None]]

_HDR = struct.Struct("<iI")  # peer rank, number of frames
_LEN = struct.Struct("<Q")


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
    def rank(self) -> int: ...

    @property
    def size(self) -> int: ...

    def send(self, dest: int, frames: Sequence[Buffer]) -> None: ...

    def recv(self, timeout: float | None = None) -> Received | None: ...

    def wakeup(self) -> None: ...

    def close(self) -> None: ...


class FrameError(Exception):
    """A peer sent bytes that are not a valid frame list."""


class _Channel:
    """One stream socket carrying length-prefixed frame lists; sends are serialised by a lock."""

    __slots__ = ("sock", "_lock", "max_frame", "closed")

    def __init__(self, sock: socket.socket, max_frame: int = 1 << 40) -> None:
        self.sock = sock
        self._lock = threading.Lock()
        self.max_frame = max_frame
        self.closed = False
        sock.setblocking(True)
        for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, 4 << 20)
            except OSError:  # pragma: no cover - platform limits
                pass

    def send(self, peer: int, frames: Sequence[Buffer]) -> None:
        parts: list[Buffer] = [_HDR.pack(peer, len(frames))]
        views = [memoryview(f).cast("B") for f in frames]
        parts.extend(_LEN.pack(v.nbytes) for v in views)
        head = b"".join(parts)  # type: ignore[arg-type]
        out: list[memoryview] = [memoryview(head)] + [v for v in views if v.nbytes]
        with self._lock:
            if self.closed:
                raise OSError("channel closed")
            _sendmsg_all(self.sock, out)

    def recv(self) -> tuple[int, list[memoryview]]:
        """Block until one complete frame list has arrived; EOF raises `EOFError`."""
        head = _recv_exact(self.sock, _HDR.size)
        peer, n = _HDR.unpack(head)
        if n > 1 << 20:
            raise FrameError(f"frame count {n} exceeds the limit")
        sizes_raw = _recv_exact(self.sock, _LEN.size * n)
        sizes = [s for (s,) in _LEN.iter_unpack(sizes_raw)]
        total = sum(sizes)
        if any(s > self.max_frame for s in sizes):
            raise FrameError(f"frame of {max(sizes)} bytes exceeds the limit of {self.max_frame}")
        buf = bytearray(total)
        if total:
            _recv_into_exact(self.sock, memoryview(buf))
        view = memoryview(buf)
        frames = []
        pos = 0
        for s in sizes:
            frames.append(view[pos : pos + s])
            pos += s
        return peer, frames

    def close(self) -> None:
        self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def _sendmsg_all(sock: socket.socket, views: list[memoryview]) -> None:
    while views:
        sent = sock.sendmsg(views[:512])
        while sent:
            first = views[0]
            if sent >= first.nbytes:
                sent -= first.nbytes
                views.pop(0)
            else:
                views[0] = first[sent:]
                sent = 0


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
        self._armed = False
        try:
            while os.read(self.r, 4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def close(self) -> None:
        for fd in (self.r, self.w):
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

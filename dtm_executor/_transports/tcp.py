"""TCP transport: authenticated, length-prefixed frame lists over a star of TCP connections.

Topology: a star through rank 0, like the local transport. Every worker holds one connection to
rank 0, which forwards frames between workers without unpickling them. Workers therefore need
to reach rank 0 only (not each other), and rank 0 is the only listening socket of a run.

Authentication: before any frame is parsed (let alone unpickled), each connection runs a mutual
HMAC-SHA256 challenge-response over a random per-run secret, the way
``multiprocessing.connection`` does with an authkey but with both sides challenging in one round
trip and the worker's rank bound into the MACs::

    rank 0 -> worker:  MAGIC | nonce0                                   (40 bytes)
    worker -> rank 0:  MAGIC | rank | nonce1 | HMAC(k, "client"|nonce0|nonce1|rank)   (76 bytes)
    rank 0 -> worker:  HMAC(k, "server"|nonce0|nonce1|rank)             (32 bytes)

Fresh nonces on both sides defeat replay; the direction labels defeat reflection. Messages of
the handshake have fixed sizes, are read under a deadline, and anything else closes the
connection. The HMAC authenticates the *connection set-up*, not each later byte: for
confidentiality and integrity on an untrusted network, turn on TLS (the ``ssl`` module, through
memory BIOs so that reads and writes from different threads never share an ``SSLSocket``).

Framing: `framing`'s wire format, parsed incrementally (`framing.FrameParser`) from non-blocking
sockets, so a half-sent frame from a dying or hostile peer never blocks rank 0; message size and
frame count are capped (``max_frame_bytes``).

Workers: `TcpPool` (``transport="tcp"``) starts them on this machine as subprocesses and on
other hosts through ssh (`ssh`); each runs `worker_main`. Imports `base`, `framing`, `ssh`,
`worker` and the leaves.
"""

from __future__ import annotations

import collections
import errno
import hashlib
import hmac
import json
import logging
import math
import os
import secrets
import select
import selectors
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Sequence, cast

from .. import _hostfile
from .._errors import BrokenDTMExecutor
from .._hostfile import HostSpec
from . import ssh, worker
from .base import Buffer, WorkerStart
from .framing import (
    DEFAULT_MAX_FRAME_BYTES,
    FrameError,
    FrameParser,
    Pending,
    StarHub,
    StarWorker,
    Waker,
    encode,
)

log = logging.getLogger("dtm_executor")

MAGIC = b"DTMXTCP1"
_NONCE = 32
_MACLEN = 32
_RANK = struct.Struct("<I")
CHALLENGE_SIZE = len(MAGIC) + _NONCE
RESPONSE_SIZE = len(MAGIC) + _RANK.size + _NONCE + _MACLEN
REPLY_SIZE = _MACLEN



class AuthError(ConnectionError):
    """A peer failed the handshake (no key, wrong key, replay, or not our protocol)."""


# -- handshake (pure: no I/O, so it can be fuzzed) ---------------------------------------------
def _mac(secret: bytes, label: bytes, nonce0: bytes, nonce1: bytes, rank: int) -> bytes:
    msg = b"dtm-executor/" + label + b"\0" + nonce0 + nonce1 + _RANK.pack(rank)
    return hmac.new(secret, msg, hashlib.sha256).digest()


def _check_secret(secret: bytes) -> bytes:
    if not isinstance(secret, (bytes, bytearray)) or len(secret) < 16:
        raise ValueError("the shared secret must be at least 16 bytes")
    return bytes(secret)


class ServerHandshake:
    """Rank 0's side: issue a challenge, check the answer, prove the key in return."""

    def __init__(self, secret: bytes) -> None:
        self._secret = _check_secret(secret)
        self.nonce = secrets.token_bytes(_NONCE)

    def challenge(self) -> bytes:
        return MAGIC + self.nonce

    def check(self, response: bytes) -> tuple[int, bytes]:
        """Return (claimed rank, reply) or raise `AuthError`."""
        if len(response) != RESPONSE_SIZE or not response.startswith(MAGIC):
            raise AuthError("not a dtm_executor handshake")
        pos = len(MAGIC)
        (rank,) = _RANK.unpack_from(response, pos)
        pos += _RANK.size
        nonce1 = bytes(response[pos : pos + _NONCE])
        mac = bytes(response[pos + _NONCE :])
        if hmac.compare_digest(nonce1, self.nonce):
            raise AuthError("reflected challenge")
        if not hmac.compare_digest(mac, _mac(self._secret, b"client", self.nonce, nonce1, rank)):
            raise AuthError("wrong key")
        return rank, _mac(self._secret, b"server", self.nonce, nonce1, rank)


class ClientHandshake:
    """A worker's side: answer rank 0's challenge with a challenge of its own, check the reply."""

    def __init__(self, secret: bytes, rank: int) -> None:
        self._secret = _check_secret(secret)
        self.rank = rank
        self.nonce = secrets.token_bytes(_NONCE)
        self._nonce0: bytes | None = None

    def respond(self, challenge: bytes) -> bytes:
        if len(challenge) != CHALLENGE_SIZE or not challenge.startswith(MAGIC):
            raise AuthError("the peer does not speak the dtm_executor protocol")
        self._nonce0 = bytes(challenge[len(MAGIC) :])
        if hmac.compare_digest(self._nonce0, self.nonce):
            raise AuthError("reflected challenge")
        mac = _mac(self._secret, b"client", self._nonce0, self.nonce, self.rank)
        return MAGIC + _RANK.pack(self.rank) + self.nonce + mac

    def check(self, reply: bytes) -> None:
        if self._nonce0 is None:
            raise AuthError("no challenge answered yet")
        want = _mac(self._secret, b"server", self._nonce0, self.nonce, self.rank)
        if len(reply) != REPLY_SIZE or not hmac.compare_digest(bytes(reply), want):
            raise AuthError("rank 0 did not prove knowledge of the key")


# -- connections -------------------------------------------------------------------------------
def _wait(sock: socket.socket, write: bool, deadline: float | None) -> None:
    fd = sock.fileno()
    if fd < 0:
        raise OSError(errno.EBADF, "connection closed")
    timeout = None if deadline is None else deadline - time.monotonic()
    if timeout is not None and timeout <= 0:
        raise TimeoutError("timed out")
    p = select.poll()
    p.register(fd, select.POLLOUT if write else select.POLLIN)
    if not p.poll(None if timeout is None else max(1, int(timeout * 1000))):
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError("timed out")


def tune_socket(sock: socket.socket) -> None:
    """No Nagle delay (messages are small and latency-bound); keepalive finds dead peers."""
    for level, opt, val in (
        (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
        # a silent peer (host gone, cable cut) is declared dead after about 5 + 3 x 2 = 11 s
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPIDLE", None), 5),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPINTVL", None), 2),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPCNT", None), 3),
        # ...and data left unacknowledged for 15 s drops the connection too
        (socket.IPPROTO_TCP, getattr(socket, "TCP_USER_TIMEOUT", None), 15_000),
        (socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20),
        (socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20),
    ):
        if opt is None:
            continue
        try:
            sock.setsockopt(level, opt, val)
        except OSError:  # pragma: no cover - platform limits
            pass


class _Conn:
    """A non-blocking stream socket, optionally carrying TLS through memory BIOs.

    ``recv_into`` is called by one thread, ``send`` by any (serialised by ``wlock``); with TLS
    the SSL object is only touched under its own short lock, never while waiting on the socket.
    """

    def __init__(
        self, sock: socket.socket, tls: tuple[ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO] | None = None
    ) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.wlock = threading.Lock()
        self._tls: ssl.SSLObject | None = None
        self._tls_lock = threading.Lock()
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        if tls is not None:  # a TLS session set up elsewhere (rank 0's accept loop)
            self._tls, self._in, self._out = tls
        self._wq: collections.deque[memoryview] = collections.deque()
        self.closed = False

    @property
    def tls(self) -> bool:
        return self._tls is not None

    def start_tls(self, ctx: ssl.SSLContext, server_side: bool, deadline: float) -> None:
        obj = ctx.wrap_bio(self._in, self._out, server_side=server_side)
        while True:
            with self._tls_lock:
                try:
                    obj.do_handshake()
                    done = True
                except ssl.SSLWantReadError:
                    done = False
                self._collect()
            with self.wlock:
                self._drain(deadline, block=True)
            if done:
                break
            _wait(self.sock, False, deadline)
            data = self.sock.recv(1 << 16)
            if not data:
                raise EOFError("connection closed during the TLS handshake")
            self._in.write(data)
        self._tls = obj

    # -- reading ---------------------------------------------------------------------------
    def recv_into(self, view: memoryview) -> int:
        """Read what is available; raises `BlockingIOError` when nothing is, 0 means EOF."""
        obj = self._tls
        if obj is None:
            return self.sock.recv_into(view)
        while True:
            with self._tls_lock:
                try:
                    n = cast(int, obj.read(len(view), view))  # with a buffer: a byte count
                except ssl.SSLWantReadError:
                    n = -1
                except ssl.SSLZeroReturnError:
                    n = 0
                self._collect()
            if self._wq:
                self._flush_soon()
            if n >= 0:
                return n
            data = self.sock.recv(1 << 18)
            if not data:
                return 0
            with self._tls_lock:
                self._in.write(data)

    def read_exact(self, n: int, deadline: float) -> bytes:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            try:
                k = self.recv_into(view[got:])
            except BlockingIOError:
                _wait(self.sock, False, deadline)
                continue
            if k == 0:
                raise EOFError("connection closed")
            got += k
        return bytes(buf)

    # -- writing ---------------------------------------------------------------------------
    def send(self, views: list[memoryview], deadline: float | None = None) -> None:
        with self.wlock:
            if self.closed:
                raise OSError(errno.EPIPE, "connection closed")
            if self._tls is None:
                self._sendmsg(views, deadline)
            else:
                for v in views:
                    for off in range(0, v.nbytes, 1 << 20):
                        with self._tls_lock:
                            self._tls.write(v[off : off + (1 << 20)])
                            self._collect()
                        self._drain(deadline, block=True)
        if self._wq:
            self._flush_soon()

    def _sendmsg(self, views: list[memoryview], deadline: float | None) -> None:
        pending = Pending(views)
        while pending:
            try:
                sent = self.sock.sendmsg(pending.head())
            except BlockingIOError:
                _wait(self.sock, True, deadline)
                continue
            pending.advance(sent)

    def _collect(self) -> None:  # under _tls_lock: keep TLS output in generation order
        data = self._out.read()
        if data:
            self._wq.append(memoryview(data))

    def _drain(self, deadline: float | None, block: bool) -> None:  # under wlock
        wq = self._wq
        while wq:
            try:
                sent = self.sock.send(wq[0])
            except BlockingIOError:
                if not block:
                    return
                _wait(self.sock, True, deadline)
                continue
            if sent >= wq[0].nbytes:
                wq.popleft()
            else:
                wq[0] = wq[0][sent:]

    def _flush_soon(self) -> None:
        # TLS output produced while reading (e.g. session tickets): write it if nobody else is
        # writing; a writer checks the queue again after releasing the lock.
        while self._wq and self.wlock.acquire(blocking=False):
            try:
                self._drain(None, block=False)
            except OSError:
                return
            finally:
                self.wlock.release()
            if self._wq:
                return  # the socket is full: the next send drains the rest

    def close(self) -> None:
        self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class TcpChannel:
    """An authenticated connection carrying frame lists (a channel of `framing`'s star)."""

    buffered = True  # TLS records and the parser may hold input the socket no longer shows

    def __init__(self, conn: _Conn, max_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self.conn = conn
        self.max_bytes = max_bytes
        self.parser = FrameParser(max_bytes)
        self.backlog: collections.deque[tuple[int, list[memoryview]]] = collections.deque()
        self._scratch = memoryview(bytearray(1 << 18))

    @property
    def sock(self) -> socket.socket:
        return self.conn.sock

    @property
    def mid_message(self) -> bool:
        return self.parser.mid_message

    def send(self, peer: int, frames: Sequence[Buffer]) -> None:
        views = encode(peer, frames)
        total = sum(v.nbytes for v in views[1:])
        if total > self.max_bytes:
            # the caller reports it (Node._undeliverable fails the tasks, rate-limited log line)
            log.debug("a message of %d bytes exceeds max_frame_bytes=%d and was not sent", total, self.max_bytes)
            raise FrameError(f"a message of {total} bytes exceeds the limit of {self.max_bytes}")
        self.conn.send(views)

    def pump(self, budget: int = 64 << 20) -> tuple[list[tuple[int, list[memoryview]]], BaseException | None, bool]:
        """Read without blocking: (complete messages, error that ends the connection, more?)."""
        msgs: list[tuple[int, list[memoryview]]] = []
        got = 0
        parser = self.parser
        while got < budget:
            target = parser.direct()
            try:
                n = self.conn.recv_into(target if target is not None else self._scratch)
            except BlockingIOError:
                return msgs, None, False
            except OSError as e:
                return msgs, e, False
            if n == 0:
                what = "in the middle of a message" if parser.mid_message else ""
                return msgs, EOFError(f"peer closed the connection {what}".rstrip()), False
            got += n
            try:
                msgs.extend(parser.advance(n) if target is not None else parser.feed(self._scratch[:n]))
            except FrameError as e:
                return msgs, e, False
        return msgs, None, True

    def recv_blocking(self, deadline: float | None = None) -> tuple[int, list[memoryview]]:
        """The next message, waiting for it (used once, for a worker's init frames)."""
        while not self.backlog:
            msgs, err, more = self.pump()
            self.backlog.extend(msgs)
            if self.backlog:
                break
            if err is not None:
                raise err
            if not more:
                _wait(self.conn.sock, False, deadline)
        return self.backlog.popleft()

    def close(self) -> None:
        self.conn.close()


# -- TLS contexts ------------------------------------------------------------------------------
def server_context(cert: str, key: str | None = None, ca: str | None = None) -> ssl.SSLContext:
    """Rank 0's TLS context; with ``ca``, workers must present a certificate signed by it."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    if ca:
        ctx.load_verify_locations(ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(cert: str | None = None, key: str | None = None, ca: str | None = None) -> ssl.SSLContext:
    """A worker's TLS context: rank 0's certificate must chain to ``ca`` (or be ``cert`` itself).

    Host names are not checked (workers connect to an address, and the HMAC handshake inside
    the TLS session authenticates rank 0 anyway); the trust anchor is the given file only, never
    the system store, so only certificates of the run's own CA are accepted.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    anchor = ca or cert
    if not anchor:
        raise ValueError("TLS needs a CA file or the server certificate to verify rank 0")
    ctx.load_verify_locations(anchor)
    if ca and cert:
        ctx.load_cert_chain(cert, key)
    return ctx


# -- connecting --------------------------------------------------------------------------------
def connect(
    host: str,
    port: int,
    secret: bytes,
    rank: int,
    *,
    tls: ssl.SSLContext | None = None,
    connect_timeout: float = 10.0,
    handshake_timeout: float = 10.0,
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    retry_for: float = 0.0,
) -> TcpChannel:
    """Connect to rank 0 and authenticate both ways; nothing is unpickled before this returns.

    With ``retry_for`` > 0, a connection that rank 0 accepted but dropped before the handshake
    was complete is made again, with growing pauses, for up to that many seconds: under a flood
    of connections from strangers rank 0 drops the oldest handshakes in progress, and a worker
    must not take that for a refusal. A failure to connect at all (nobody listening, no route)
    and a rank 0 that fails *our* check are reported at once.
    """
    end = time.monotonic() + retry_for
    pause = 0.05
    while True:
        sock = socket.create_connection((host, port), timeout=connect_timeout)
        tune_socket(sock)
        conn = _Conn(sock)
        try:
            deadline = time.monotonic() + handshake_timeout
            if tls is not None:
                conn.start_tls(tls, False, deadline)
            hs = ClientHandshake(secret, rank)
            conn.send([memoryview(hs.respond(conn.read_exact(CHALLENGE_SIZE, deadline)))], deadline)
            try:
                reply = conn.read_exact(REPLY_SIZE, deadline)
            except EOFError:
                raise _Dropped("rank 0 refused the connection (wrong key, or rank not expected)") from None
            hs.check(reply)
        except BaseException as e:
            conn.close()
            if not _dropped(e) or time.monotonic() + pause > end:
                raise
            log.debug("rank 0 dropped the connection of rank %d during the handshake (%s); trying again",
                      rank, e)
            time.sleep(pause)
            pause = min(2 * pause, 1.0)
            continue
        return TcpChannel(conn, max_frame_bytes)


class _Dropped(AuthError):
    """Rank 0 closed the connection before the handshake was complete (refused or evicted)."""


def _dropped(e: BaseException) -> bool:
    """Whether an error during the handshake may be rank 0 dropping us (then trying again helps)."""
    if isinstance(e, _Dropped):
        return True
    if isinstance(e, AuthError):
        return False  # rank 0 failed our check: never talk to it again
    if isinstance(e, ssl.SSLError):
        return isinstance(e, (ssl.SSLEOFError, ssl.SSLZeroReturnError))
    return isinstance(e, (EOFError, ConnectionError, TimeoutError))


class _Handshake:
    """One not yet authenticated connection in rank 0's accept loop (non-blocking, no thread)."""

    __slots__ = ("sock", "addr", "host", "deadline", "server", "tls", "inb", "outb", "wq", "buf", "stage", "rank")

    def __init__(self, sock: socket.socket, addr: Any, deadline: float, server: ServerHandshake) -> None:
        self.sock = sock
        self.addr = addr
        self.host = str(addr[0]) if isinstance(addr, tuple) and addr else str(addr)
        self.deadline = deadline
        self.server = server
        self.tls: ssl.SSLObject | None = None
        self.inb = ssl.MemoryBIO()
        self.outb = ssl.MemoryBIO()
        self.wq: collections.deque[memoryview] = collections.deque()
        self.buf = bytearray()
        self.stage = 0  # 0: TLS handshake, 1: waiting for the answer, 2: sending the reply
        self.rank = -1


class _Refusals:
    """Counts refused connections and logs them at most once per ``interval``.

    The first refusal after a quiet interval is logged at once, with its address and reason;
    the ones that follow are counted and summarised when the interval ends (and at close), so a
    flood of thousands of connections costs a few log lines, not one per connection.
    """

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self.total = 0
        self._reasons: collections.Counter[str] = collections.Counter()
        self._hosts: collections.Counter[str] = collections.Counter()
        self._last = -math.inf

    def add(self, reason: str, addr: Any, host: str) -> None:
        self.total += 1
        now = time.monotonic()
        if not self._reasons and now - self._last >= self.interval:
            log.warning("refused a connection from %s: %s", _addr_text(addr), reason)
            self._last = now
            return
        self._reasons[reason] += 1
        self._hosts[host] += 1

    def due(self) -> float | None:
        """When the pending summary is to be logged (monotonic time), if there is one."""
        return self._last + self.interval if self._reasons else None

    def flush(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self._reasons or (not force and now - self._last < self.interval):
            return
        n = sum(self._reasons.values())
        reasons = ", ".join(f"{c} {r}" for r, c in self._reasons.most_common(4))
        if len(self._reasons) > 4:
            reasons += ", ..."
        hosts = ", ".join(f"{h} ({c})" for h, c in self._hosts.most_common(3))
        if len(self._hosts) > 3:
            hosts += f" and {len(self._hosts) - 3} more hosts"
        log.warning("refused %d more connection%s in the last %.0f s (%s; %s refused in all) from %s",
                    n, "" if n == 1 else "s", min(now - self._last, 1e9), reasons, self.total, hosts)
        self._reasons.clear()
        self._hosts.clear()
        self._last = now


def _addr_text(addr: Any) -> str:
    if isinstance(addr, tuple) and len(addr) >= 2:
        return f"{addr[0]}:{addr[1]}" if ":" not in str(addr[0]) else f"[{addr[0]}]:{addr[1]}"
    return str(addr)


_ACCEPT = object()
_EVICTED = "evicted (too many handshakes in progress)"


class Listener:
    """Rank 0's listening socket: accepts, authenticates, and hands over connections.

    One thread runs every handshake at once, without blocking on any of them (a slow or silent
    client delays nobody), each under its own deadline. Connections that answer with anything
    but the protocol are closed at their first bytes. At most ``max_pending`` handshakes are in
    progress; when a new connection arrives beyond that, the oldest handshake of the address
    with the most handshakes in progress is dropped, so a flood from one host never holds up
    workers on other hosts, and a worker (which answers within milliseconds) gets in even
    between thousands of connections from its own host. Only ranks announced with `expect` are
    accepted, each once. Refusals are counted (`refused`) and logged a bounded number of times.
    """

    def __init__(
        self,
        secret: bytes,
        host: str,
        port: int = 0,
        *,
        on_auth: Callable[[int, TcpChannel, Any], None],
        tls: ssl.SSLContext | None = None,
        handshake_timeout: float = 10.0,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        max_pending: int = 512,
        log_interval: float = 10.0,
    ) -> None:
        self._secret = _check_secret(secret)
        self._on_auth = on_auth
        self._tls = tls
        self._timeout = handshake_timeout
        self._max_bytes = max_frame_bytes
        self._max_pending = max(1, min(max_pending, _fd_budget()))
        self._lock = threading.Lock()
        self._expected: set[int] = set()
        self._all: dict[_Handshake, None] = {}  # in arrival order, hence in deadline order
        self._by_host: dict[str, dict[_Handshake, None]] = {}
        self._refusals = _Refusals(log_interval)
        self._closed = False
        if host in ("", "0.0.0.0"):
            host = "0.0.0.0"
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.create_server(
            (host, port), family=family, backlog=1024,
            dualstack_ipv6=(host == "::" and socket.has_dualstack_ipv6()),
        )
        self.sock.setblocking(False)
        self.address: tuple[str, int] = self.sock.getsockname()[:2]
        self._waker = Waker()
        self._sel = selectors.DefaultSelector()
        self._thread = threading.Thread(target=self._loop, name="dtm-tcp-accept", daemon=True)
        self._thread.start()

    @property
    def refused(self) -> int:
        """How many connections were refused so far."""
        return self._refusals.total

    def expect(self, ranks: Sequence[int]) -> None:
        with self._lock:
            self._expected.update(ranks)

    def withdraw(self, ranks: Sequence[int]) -> None:
        with self._lock:
            self._expected.difference_update(ranks)

    # -- the accept loop (one thread) --------------------------------------------------------
    def _loop(self) -> None:
        sel = self._sel
        sel.register(self.sock, selectors.EVENT_READ, _ACCEPT)
        sel.register(self._waker.r, selectors.EVENT_READ, None)
        try:
            while not self._closed:
                events = sel.select(self._next_timeout())
                accept = False
                for key, mask in events:  # handshakes in progress first: a worker's answer
                    if key.data is None:   # is never dropped for a newcomer that was waiting
                        self._waker.drain()
                    elif key.data is _ACCEPT:
                        accept = True
                    else:
                        self._step(key.data, mask)
                if accept and not self._closed:
                    self._accept_some()
                self._expire()
                self._refusals.flush()
        except (OSError, ValueError):
            if not self._closed:  # pragma: no cover
                log.exception("the TCP listener failed")
        finally:
            for h in list(self._all):
                self._forget(h)
                h.sock.close()
            self._refusals.flush(force=True)
            sel.close()

    def _next_timeout(self) -> float | None:
        when = [t for t in (self._refusals.due(),) if t is not None]
        if self._all:
            when.append(next(iter(self._all)).deadline)
        if not when:
            return None
        return max(0.0, min(when) - time.monotonic()) + 0.001

    def _accept_some(self) -> None:
        for _ in range(64):  # then serve the handshakes again
            try:
                s, addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM) and self._all:
                    self._evict()  # out of descriptors: make room, the connection waits in the backlog
                    continue
                if e.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue
                self._refusals.add(f"accept() failed: {e}", "(not accepted)", "(not accepted)")
                time.sleep(0.05)
                return
            if len(self._all) >= self._max_pending:
                self._evict()
            self._begin(s, addr)

    def _evict(self) -> None:
        """Drop the oldest handshake of the address with the most handshakes in progress."""
        host = max(self._by_host, key=lambda k: len(self._by_host[k]))
        self._refuse(next(iter(self._by_host[host])), _EVICTED)

    def _begin(self, s: socket.socket, addr: Any) -> None:
        h = _Handshake(s, addr, time.monotonic() + self._timeout, ServerHandshake(self._secret))
        try:
            s.setblocking(False)
            tune_socket(s)
            self._all[h] = None
            self._by_host.setdefault(h.host, {})[h] = None
            self._sel.register(s, selectors.EVENT_READ, h)
            if self._tls is not None:
                h.tls = self._tls.wrap_bio(h.inb, h.outb, server_side=True)
                self._tls_progress(h)
            else:
                h.stage = 1
                self._out(h, h.server.challenge())
            self._rearm(h)
        except Exception as e:  # noqa: BLE001 - whatever happened, refuse and go on
            self._refuse(h, _reason(e))

    def _step(self, h: _Handshake, mask: int) -> None:
        if h not in self._all:
            return  # refused earlier in this round
        try:
            if mask & selectors.EVENT_WRITE:
                self._flush(h)
            if mask & selectors.EVENT_READ:
                self._read(h)
            if h.stage == 2 and not h.wq:
                self._hand_over(h)
            else:
                self._rearm(h)
        except Exception as e:  # noqa: BLE001 - whatever a stranger sent, refuse and go on
            self._refuse(h, _reason(e))

    def _read(self, h: _Handshake) -> None:
        if h.stage == 2:  # nothing more is expected before the reply is out
            if h.sock.recv(1, socket.MSG_PEEK) == b"":
                raise EOFError("connection closed")
            return
        if h.tls is None:
            data = h.sock.recv(RESPONSE_SIZE - len(h.buf))  # never past the answer
            if not data:
                raise EOFError("connection closed")
            h.buf += data
        else:
            data = h.sock.recv(1 << 16)
            if not data:
                raise EOFError("connection closed")
            h.inb.write(data)
            if h.stage == 0:
                self._tls_progress(h)
            if h.stage == 1:
                try:
                    h.buf += h.tls.read(RESPONSE_SIZE - len(h.buf))
                except ssl.SSLWantReadError:
                    pass
                self._collect(h)
        if h.stage == 1:
            self._check(h)

    def _check(self, h: _Handshake) -> None:
        n = min(len(h.buf), len(MAGIC))
        if h.buf[:n] != MAGIC[:n]:
            raise AuthError("not a dtm_executor handshake")
        if len(h.buf) < RESPONSE_SIZE:
            return
        rank, reply = h.server.check(bytes(h.buf))
        with self._lock:
            if rank not in self._expected:
                raise AuthError(f"authenticated, but rank {rank} is not expected")
            self._expected.discard(rank)
        h.rank = rank
        h.stage = 2  # from here on a failure gives the rank back (see _refuse)
        self._out(h, reply)

    def _tls_progress(self, h: _Handshake) -> None:
        assert h.tls is not None
        try:
            h.tls.do_handshake()
            done = True
        except ssl.SSLWantReadError:
            done = False
        self._collect(h)
        if done:
            h.stage = 1
            self._out(h, h.server.challenge())
        else:
            self._flush(h)

    def _out(self, h: _Handshake, data: bytes) -> None:
        if h.tls is not None:
            h.tls.write(data)
            self._collect(h)
        else:
            h.wq.append(memoryview(data))
        self._flush(h)

    def _collect(self, h: _Handshake) -> None:
        data = h.outb.read()
        if data:
            h.wq.append(memoryview(data))

    def _flush(self, h: _Handshake) -> None:
        while h.wq:
            try:
                sent = h.sock.send(h.wq[0])
            except BlockingIOError:
                return
            if sent >= h.wq[0].nbytes:
                h.wq.popleft()
            else:
                h.wq[0] = h.wq[0][sent:]

    def _rearm(self, h: _Handshake) -> None:
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if h.wq else 0)
        if self._sel.get_key(h.sock).events != events:
            self._sel.modify(h.sock, events, h)

    def _hand_over(self, h: _Handshake) -> None:
        self._forget(h)
        conn = _Conn(h.sock, tls=(h.tls, h.inb, h.outb) if h.tls is not None else None)
        ch = TcpChannel(conn, self._max_bytes)
        if self._closed:
            ch.close()
            return
        try:
            self._on_auth(h.rank, ch, h.addr)
        except Exception:  # noqa: BLE001 - the pool's problem, but the listener must go on
            log.exception("handing over the connection of rank %d failed", h.rank)
            ch.close()

    def _expire(self) -> None:
        now = time.monotonic()
        while self._all:
            h = next(iter(self._all))
            if h.deadline > now:
                return
            self._refuse(h, "timed out")

    def _forget(self, h: _Handshake) -> None:
        self._all.pop(h, None)
        peers = self._by_host.get(h.host)
        if peers is not None:
            peers.pop(h, None)
            if not peers:
                del self._by_host[h.host]
        try:
            self._sel.unregister(h.sock)
        except (KeyError, ValueError):
            pass

    def _refuse(self, h: _Handshake, reason: str) -> None:
        self._forget(h)
        if h.stage == 2:  # authenticated, but the reply could not be delivered
            with self._lock:
                self._expected.add(h.rank)
        self._refusals.add(reason, h.addr, h.host)  # counted before the peer can see the close
        try:
            h.sock.close()
        except OSError:  # pragma: no cover
            pass

    def close(self) -> None:
        self._closed = True
        self._waker.wake()
        self._thread.join(2.0)
        try:
            self.sock.close()
        except OSError:  # pragma: no cover
            pass
        self._waker.close()


def _reason(e: BaseException) -> str:
    if isinstance(e, TimeoutError):
        return "timed out"
    if isinstance(e, AuthError):
        return str(e)
    if isinstance(e, EOFError):
        return "closed by the peer during the handshake"
    if isinstance(e, ssl.SSLError):
        return f"TLS: {e.reason or e}"
    return f"{type(e).__name__}: {e}"


def _fd_budget() -> int:
    """How many handshakes may hold a file descriptor at once: a quarter of this process's."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):  # pragma: no cover - not POSIX
        return 256
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return 4096
    return max(16, soft // 4)


# -- transports --------------------------------------------------------------------------------
class TcpHubTransport(StarHub):
    """Rank 0's end: one authenticated channel per worker (the star of `framing`), and the
    listener that authenticates them."""

    def __init__(self, size: int) -> None:
        super().__init__(size, log_losses=True)
        self.listener: Listener | None = None

    def close(self) -> None:
        if self.listener is not None:
            self.listener.close()
        super().close()


class TcpWorkerTransport(StarWorker):
    """A worker's end: everything goes through its channel to rank 0."""

    def __init__(self, ch: TcpChannel, rank: int, size: int) -> None:
        super().__init__(ch, rank, size, log_losses=True)


# -- the pool ----------------------------------------------------------------------------------
class _Launch:
    """One started process: a local worker, or the ssh client of one remote host."""

    def __init__(self, host: str, ranks: list[int], proc: subprocess.Popen[bytes], remote: bool) -> None:
        self.host = host
        self.ranks = ranks
        self.proc = proc
        self.remote = remote
        self.tail: collections.deque[bytes] = collections.deque(maxlen=64)
        self.forwarder = threading.Thread(target=self._forward, name="dtm-stderr", daemon=True)
        self.forwarder.start()

    def _forward(self) -> None:
        """Copy the process's stderr to ours as it comes, keeping the end for error messages."""
        pipe = self.proc.stderr
        assert pipe is not None
        fd = pipe.fileno()
        while True:
            try:
                data = os.read(fd, 65536)
            except OSError:
                break
            if not data:
                break
            self.tail.append(data)
            try:
                sys.stderr.write(data.decode("utf-8", "replace"))
                sys.stderr.flush()
            except Exception:  # noqa: BLE001 - a closed or replaced stderr must not kill us
                pass
        try:
            pipe.close()
        except OSError:
            pass

    def last_output(self, limit: int = 2000) -> str:
        text = b"".join(self.tail).decode("utf-8", "replace").strip()
        if len(text) > limit:
            text = "..." + text[-limit:]
        return text

    def send_config(self, cfg: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(cfg).encode() + b"\n")
            self.proc.stdin.flush()
        except OSError:
            pass  # it died already: reported by the start-up check

    def close_stdin(self) -> None:
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        except OSError:
            pass


def _pop(options: dict[str, Any], key: str, default: Any = None) -> Any:
    return options.pop(key, default)


class TcpPool:
    """The workers of one ``transport="tcp"`` executor, and rank 0's listening socket.

    Keyword options (popped from ``options``): ``hostfile``, ``hosts``, ``ssh_command`` (str or
    argv list, default ``"ssh"``), ``remote_python`` (shell text, default this interpreter's
    path), ``remote_dir`` (default the current directory), ``tls_cert``, ``tls_key``, ``tls_ca``,
    ``connect_timeout`` (ssh and TCP connects, default 10 s), ``start_timeout`` (until every
    worker has authenticated, default 60 s), ``listen_address`` and ``port`` (what rank 0 binds
    and workers connect to), ``max_frame_bytes``.
    """

    def __init__(self, max_workers: int, start: WorkerStart, options: dict[str, Any]) -> None:
        hostfile = _pop(options, "hostfile")
        hosts = _pop(options, "hosts")
        ssh_command = _pop(options, "ssh_command", "ssh")
        remote_python = _pop(options, "remote_python")
        remote_dir = _pop(options, "remote_dir")
        tls_cert = _pop(options, "tls_cert")
        tls_key = _pop(options, "tls_key")
        tls_ca = _pop(options, "tls_ca")
        self.connect_timeout = float(_pop(options, "connect_timeout", 10.0))
        self.start_timeout = float(_pop(options, "start_timeout", 60.0))
        handshake_timeout = float(_pop(options, "handshake_timeout", 10.0))
        listen_address = _pop(options, "listen_address")
        port = int(_pop(options, "port", 0))
        max_frame_bytes = int(_pop(options, "max_frame_bytes", DEFAULT_MAX_FRAME_BYTES))
        if (tls_key or tls_ca) and not tls_cert:
            raise ValueError("tls_key= and tls_ca= need tls_cert=")

        specs = _hostfile.resolve_hosts(hostfile, hosts)
        if specs is None:
            specs = [HostSpec("localhost", max_workers)]
        elif max_workers != sum(s.slots for s in specs):
            log.debug("tcp transport: the hosts define %d workers", sum(s.slots for s in specs))
        self.specs = specs
        nworkers = sum(s.slots for s in specs)
        self.workers = list(range(1, nworkers + 1))
        self.local_worker = False
        self.hosts: dict[int, str] = {}
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self._launches: list[_Launch] = []
        self._by_rank: dict[int, _Launch] = {}
        self._cv = threading.Condition()
        self._chans: dict[int, TcpChannel] = {}
        self._failed = False

        remote = [s.host for s in specs if not s.is_local]
        route = {h: ssh.route_address(h) for h in remote}
        if listen_address:
            bind = listen_address
        elif not remote:
            bind = "127.0.0.1"  # local-only runs never listen beyond loopback
        else:
            known = set(route.values())
            if None not in known and len(known) == 1:
                bind = known.pop()  # type: ignore[assignment]
            elif any(a and ":" in a for a in known):
                bind = "::"
            else:
                bind = "0.0.0.0"
        local_addr = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(bind, bind)

        tls_files = None
        server_ctx = None
        if tls_cert:
            tls_files = {k: os.path.abspath(v) for k, v in
                         (("cert", tls_cert), ("key", tls_key), ("ca", tls_ca)) if v}
            server_ctx = server_context(tls_files["cert"], tls_files.get("key"), tls_files.get("ca"))
            client_context(**tls_files)  # fail here, not on every worker, if files are bad

        secret = os.urandom(32)  # per run; only ever written to the workers' standard input
        self.transport = TcpHubTransport(nworkers + 1)
        try:
            listener = Listener(
                secret, bind, port, on_auth=self._on_auth, tls=server_ctx,
                handshake_timeout=handshake_timeout, max_frame_bytes=max_frame_bytes,
            )
        except OSError as e:
            self.transport.close()
            raise BrokenDTMExecutor(f"cannot listen on {bind}:{port}: {e}") from e
        self.transport.listener = listener
        self.address = listener.address
        listener.expect(self.workers)

        self._lock = threading.Lock()
        self._closed = False
        self._replacing = True
        self._next_rank = nworkers + 1
        self._start = start
        self._replace_ctx = (ssh_command, remote_python, remote_dir, listen_address, route, local_addr)
        base = {
            "v": 1,
            "port": self.address[1],
            "secret": secret.hex(),
            "tls": tls_files,
            "connect_timeout": self.connect_timeout,
            "handshake_timeout": handshake_timeout,
            "start_timeout": self.start_timeout,
            "max_frame_bytes": max_frame_bytes,
        }
        self._base = base
        try:
            rank = 1
            for spec in specs:
                ranks = list(range(rank, rank + spec.slots))
                rank += spec.slots
                for r in ranks:
                    self.hosts[r] = spec.host
                if spec.is_local:
                    for r in ranks:
                        launch = self._start_local(r)
                        launch.send_config(dict(base, host=local_addr, rank=r))
                else:
                    launch = self._start_remote(spec.host, ranks, ssh_command, remote_python, remote_dir)
                    launch.send_config(dict(base, host=listen_address or route[spec.host], ranks=ranks))
            self._wait_started(BrokenDTMExecutor)
            for r in self.workers:
                ch = self._chans[r]
                try:
                    where = remote_dir if self._by_rank[r].remote else None
                    ch.send(0, start.frames(r, nworkers + 1, remote_dir=where))
                except (OSError, FrameError):
                    pass  # its loss is reported by the transport
                self.transport.add(r, ch)
        except BaseException:
            with self._cv:
                self._failed = True
            self.kill()
            for ch in self._chans.values():
                ch.close()
            self.transport.close()
            raise

    # -- replacing a lost worker -------------------------------------------------------------
    def replace(
        self,
        dead: int,
        workers: list[int],
        call_soon: Callable[[Callable[[], None]], None],
        on_ready: Callable[[int], None],
        on_failed: Callable[[int, str], None],
    ) -> int | None:
        """Start a worker (a new rank) on the host of ``dead``; None if we no longer replace.

        The start (ssh, connect, authenticate) runs in a thread of its own; the new rank joins
        on the communication thread (``call_soon``), before its first request can arrive.
        """
        with self._lock:
            if self._closed or not self._replacing:
                return None
            rank = self._next_rank
            self._next_rank += 1
        host = self.hosts.get(dead, "localhost")
        self.hosts[rank] = host
        live = [w for w in workers if w != dead] + [rank]
        threading.Thread(target=self._start_replacement, name=f"dtm-replace-{rank}", daemon=True,
                         args=(rank, host, live, call_soon, on_ready, on_failed)).start()
        return rank

    def _start_replacement(
        self, rank: int, host: str, live: list[int], call_soon: Callable[[Callable[[], None]], None],
        on_ready: Callable[[int], None], on_failed: Callable[[int, str], None],
    ) -> None:
        ssh_command, remote_python, remote_dir, listen_address, route, local_addr = self._replace_ctx
        listener = self.transport.listener
        try:
            assert listener is not None
            listener.expect([rank])
            spec_local = _hostfile.is_local(host)
            with self._lock:
                if self._closed:
                    return
                if spec_local:
                    launch = self._start_local(rank)
                    launch.send_config(dict(self._base, host=local_addr, rank=rank))
                else:
                    launch = self._start_remote(host, [rank], ssh_command, remote_python, remote_dir)
                    launch.send_config(dict(self._base, host=listen_address or route.get(host), ranks=[rank]))
            deadline = time.monotonic() + self.start_timeout
            with self._cv:
                while rank not in self._chans and not self._closed:
                    if launch.proc.poll() is not None or time.monotonic() >= deadline:
                        raise OSError(self._describe_failure(launch))
                    self._cv.wait(0.05)
                ch = self._chans.get(rank)
            if ch is None:
                return  # shut down meanwhile
            where = remote_dir if launch.remote else None
            ch.send(0, self._start.frames(rank, rank + 1, workers=live, remote_dir=where))
        except Exception as e:  # noqa: BLE001 - reported on the communication thread
            text = str(e) if isinstance(e, OSError) else f"{type(e).__name__}: {e}"
            call_soon(lambda: on_failed(rank, text))
            return

        def join() -> None:
            on_ready(rank)
            self.transport.add(rank, ch)

        call_soon(join)

    def stop_replacing(self, rank: int) -> None:
        with self._lock:
            self._replacing = False

    # -- starting ------------------------------------------------------------------------
    def _start_local(self, rank: int) -> _Launch:
        env = dict(os.environ)
        env["DTM_EXECUTOR_RANK"] = str(rank)
        cmd = [sys.executable, *subprocess._args_from_interpreter_flags(), "-c", ssh.WORKER_BOOT]  # type: ignore[attr-defined]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE, env=env, close_fds=True)
        return self._track(_Launch("localhost", [rank], proc, remote=False))

    def _start_remote(
        self, host: str, ranks: list[int], ssh_command: Any, remote_python: str | None, remote_dir: str | None
    ) -> _Launch:
        proc = ssh.start_host(host, ranks, ssh_command, remote_python, remote_dir, self.connect_timeout)
        return self._track(_Launch(host, ranks, proc, remote=True))

    def _track(self, launch: _Launch) -> _Launch:
        self._launches.append(launch)
        for r in launch.ranks:
            self._by_rank[r] = launch
            self.procs[r] = launch.proc
        return launch

    def _on_auth(self, rank: int, ch: TcpChannel, addr: Any) -> None:
        with self._cv:
            if self._failed:
                ch.close()
                return
            self._chans[rank] = ch
            self._cv.notify_all()
        log.debug("worker rank %d connected from %s", rank, addr)

    def _wait_started(self, error: type[BaseException]) -> None:
        deadline = time.monotonic() + self.start_timeout
        with self._cv:
            while True:
                waiting = [ln for ln in self._launches if any(r not in self._chans for r in ln.ranks)]
                if not waiting:
                    return
                dead = [ln for ln in waiting if ln.proc.poll() is not None]
                if dead or time.monotonic() >= deadline:
                    self._failed = True
                    break
                self._cv.wait(0.05)
        parts = []
        for ln in dead or waiting:
            if dead:
                for _ in range(20):  # let its last words arrive
                    if not ln.forwarder.is_alive():
                        break
                    ln.forwarder.join(0.05)
            parts.append(self._describe_failure(ln))
        raise error("could not start the TCP workers: " + "\n".join(parts))

    def _describe_failure(self, ln: _Launch) -> str:
        missing = [r for r in ln.ranks if r not in self._chans]
        who = f"host {ln.host!r} (rank{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))})"
        code = ln.proc.poll()
        if code is None:
            msg = f"{who}: the worker did not connect back within {self.start_timeout:g} s"
        elif ln.remote and code == 255:
            msg = f"{who}: ssh could not reach the host or log in (exit status 255)"
        elif code == ssh.EXIT_NOCONNECT:
            msg = f"{who}: the worker could not connect back to rank 0 (port {self.address[1]})"
        else:
            launcher = "ssh" if ln.remote else "the worker process"
            msg = f"{who}: {launcher} exited with status {code} before the worker connected"
        out = ln.last_output()
        if out:
            msg += "; its stderr ends with:\n    " + out.replace("\n", "\n    ")
        return msg

    # -- pool interface ------------------------------------------------------------------
    def describe(self, rank: int) -> str:
        ln = self._by_rank.get(rank)
        if ln is None:
            return f"rank {rank}"
        how = "ssh pid" if ln.remote else "pid"
        return f"rank {rank} on host {ln.host!r} ({how} {ln.proc.pid})"

    def exit_status(self, rank: int) -> int | None:
        ln = self._by_rank.get(rank)
        if ln is None:
            return None
        try:
            return ln.proc.wait(0.5)
        except subprocess.TimeoutExpired:
            return None

    def join(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        for ln in list(self._launches):
            try:
                ln.proc.wait(max(0.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def kill(self) -> None:
        """Close every worker's standard input (they exit on EOF), then end what is left."""
        with self._lock:
            self._closed = True
        with self._cv:
            self._cv.notify_all()
        for ln in list(self._launches):
            ln.close_stdin()
        end = time.monotonic() + 1.0
        for ln in list(self._launches):
            try:
                ln.proc.wait(max(0.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for sig in (signal.SIGTERM, signal.SIGKILL):
            alive = [ln for ln in self._launches if ln.proc.poll() is None]
            for ln in alive:
                try:
                    ln.proc.send_signal(sig)
                except OSError:
                    pass
            for ln in alive:
                try:
                    ln.proc.wait(2.0)
                except subprocess.TimeoutExpired:
                    pass
        for ln in list(self._launches):
            ln.forwarder.join(1.0)


# -- a worker ----------------------------------------------------------------------------------
def worker_main() -> None:
    """Entry point of a TCP worker: read the configuration, connect, authenticate, then serve."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is rank 0's to handle
    cfg = ssh.read_config()
    rank = int(cfg["rank"])

    def watch() -> None:
        ssh.drain_stdin()
        worker.exit_now(0)  # whoever started us is gone

    threading.Thread(target=watch, name="dtm-stdin", daemon=True).start()
    host = cfg.get("host") or ssh.ssh_client_address()
    port = int(cfg["port"])
    try:
        if not host:
            raise OSError("no address for rank 0 (give listen_address=)")
        tls = client_context(**cfg["tls"]) if cfg.get("tls") else None
        ch = connect(
            host, port, bytes.fromhex(cfg["secret"]), rank, tls=tls,
            connect_timeout=float(cfg["connect_timeout"]),
            handshake_timeout=float(cfg["handshake_timeout"]),
            max_frame_bytes=int(cfg["max_frame_bytes"]),
            retry_for=float(cfg.get("start_timeout", cfg["connect_timeout"])),  # as long as rank 0 waits
        )
    except Exception as e:  # noqa: BLE001 - reported on stderr, which reaches rank 0's user
        sys.stderr.write(
            f"dtm_executor: worker rank {rank} on {socket.gethostname()} cannot connect to rank 0 "
            f"at {host}:{port}: {type(e).__name__}: {e}\n"
        )
        ssh.flush_exit(ssh.EXIT_NOCONNECT)
    del cfg
    try:
        _, frames = ch.recv_blocking()
    except (EOFError, OSError, FrameError):
        ssh.flush_exit(0)
    worker.serve(frames, lambda rank, size: TcpWorkerTransport(ch, rank, size),
                 where=f"(on host {socket.gethostname()})\n")

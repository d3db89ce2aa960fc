"""Security of the TCP transport: nothing is unpickled before both sides proved the shared key.

Every attack carries a pickle whose unpickling would create a marker file (``__reduce__`` calls
``open(path, "w")``); each test asserts the file does not exist. Attacks are run against the real
listener of a running executor, against a bare `Listener`, against rank 0's transport after
authentication (oversized, truncated and stalled frames), and against a real worker process
that connects to a fake rank 0. Hypothesis fuzzes the frame parser and the handshake.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dtm_executor import DTMExecutor, current_executor
from dtm_executor._transports import tcp as _tcp
from dtm_executor._transports import framing
from dtm_executor._transports.framing import FrameError

SECRET = bytes(range(32))


# -- the marker payload -------------------------------------------------------------------------
class Mark:
    """Unpickling an instance creates the file ``path`` (as an attacker's code would run)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


@pytest.fixture
def marker(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "UNPICKLED"
    payload_check = pickle.loads(pickle.dumps(Mark(tmp_path / "selftest")))  # the payload works
    payload_check.close()
    assert (tmp_path / "selftest").exists()
    yield path
    assert not path.exists(), "an unauthenticated payload was unpickled"


def payloads(marker: Path) -> list[bytes]:
    """The same malicious pickle as raw bytes, as a frame list, and as a frame list after a
    plausible header."""
    p = pickle.dumps(Mark(marker), 5)
    framed = b"".join(framing.encode(0, [p, p]))
    return [p, framed, b"\0" * 8 + framed]


def square(x: int) -> int:
    return x * x


def fib(n: int) -> int:
    if n < 2:
        return n
    ex = current_executor()
    a, b = ex.submit(fib, n - 1), ex.submit(fib, n - 2)
    return a.result() + b.result()


# -- helpers ------------------------------------------------------------------------------------
def refused(sock: socket.socket, timeout: float = 10.0) -> bool:
    """True when the peer closes the connection (after reading whatever it sent us)."""
    sock.settimeout(timeout)
    end = time.monotonic() + timeout
    try:
        while time.monotonic() < end:
            if not sock.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False
    return False


def send_quietly(sock: socket.socket, data: bytes) -> None:
    try:
        sock.sendall(data)
    except OSError:
        pass  # already refused


class AuthLog:
    def __init__(self) -> None:
        self.got: list[tuple[int, _tcp.TcpChannel]] = []
        self.event = threading.Event()

    def __call__(self, rank: int, ch: _tcp.TcpChannel, addr: Any) -> None:
        self.got.append((rank, ch))
        self.event.set()


@pytest.fixture
def listener() -> Iterator[tuple[_tcp.Listener, AuthLog]]:
    log = AuthLog()
    lst = _tcp.Listener(SECRET, "127.0.0.1", on_auth=log, handshake_timeout=1.0)
    lst.expect([1, 2])
    try:
        yield lst, log
    finally:
        lst.close()
        for _, ch in log.got:
            ch.close()


def legit(lst: _tcp.Listener, rank: int) -> _tcp.TcpChannel:
    return _tcp.connect(*lst.address, SECRET, rank, handshake_timeout=5)


# -- the handshake, without sockets -------------------------------------------------------------
def test_handshake_roundtrip_binds_the_rank() -> None:
    server, client = _tcp.ServerHandshake(SECRET), _tcp.ClientHandshake(SECRET, 5)
    rank, reply = server.check(client.respond(server.challenge()))
    assert rank == 5
    client.check(reply)


def test_wrong_key_is_refused_both_ways() -> None:
    other = bytes(32)
    server, client = _tcp.ServerHandshake(SECRET), _tcp.ClientHandshake(other, 1)
    with pytest.raises(_tcp.AuthError, match="wrong key"):
        server.check(client.respond(server.challenge()))
    # a fake rank 0 without the key cannot answer a worker's challenge either
    fake, client = _tcp.ServerHandshake(other), _tcp.ClientHandshake(SECRET, 1)
    resp = client.respond(fake.challenge())
    with pytest.raises(_tcp.AuthError):
        fake.check(resp)
    with pytest.raises(_tcp.AuthError, match="did not prove"):
        client.check(os.urandom(32))


def test_replayed_handshakes_are_refused() -> None:
    s1, c1 = _tcp.ServerHandshake(SECRET), _tcp.ClientHandshake(SECRET, 1)
    recorded_response = c1.respond(s1.challenge())
    _, recorded_reply = s1.check(recorded_response)
    # replaying the worker's answer to a new challenge
    with pytest.raises(_tcp.AuthError, match="wrong key"):
        _tcp.ServerHandshake(SECRET).check(recorded_response)
    # replaying rank 0's proof to a new worker, even one sent the very same challenge
    c2 = _tcp.ClientHandshake(SECRET, 1)
    c2.respond(s1.challenge())
    with pytest.raises(_tcp.AuthError):
        c2.check(recorded_reply)


def test_reflection_and_rank_tampering_are_refused() -> None:
    server = _tcp.ServerHandshake(SECRET)
    client = _tcp.ClientHandshake(SECRET, 1)
    resp = bytearray(client.respond(server.challenge()))
    resp[len(_tcp.MAGIC)] ^= 1  # claim rank 0 with rank 1's MAC
    with pytest.raises(_tcp.AuthError):
        server.check(bytes(resp))
    # a worker echoing rank 0's own nonce back (reflection) is refused before any MAC check
    reflected = _tcp.MAGIC + (1).to_bytes(4, "little") + server.nonce + bytes(32)
    with pytest.raises(_tcp.AuthError, match="reflected"):
        server.check(reflected)


def test_short_secrets_are_rejected() -> None:
    with pytest.raises(ValueError):
        _tcp.ServerHandshake(b"short")


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200))
def test_fuzz_server_check_refuses_arbitrary_answers(data: bytes) -> None:
    server = _tcp.ServerHandshake(SECRET)
    with pytest.raises(_tcp.AuthError):
        server.check(data)
    with pytest.raises(_tcp.AuthError):
        server.check(_tcp.MAGIC + data[: _tcp.RESPONSE_SIZE - 8].ljust(_tcp.RESPONSE_SIZE - 8, b"\0"))


@settings(max_examples=300, deadline=None)
@given(pos=st.integers(0, _tcp.RESPONSE_SIZE - 1), bit=st.integers(0, 7), rank=st.integers(0, 2**32 - 1))
def test_fuzz_any_bit_flip_of_a_valid_answer_is_refused(pos: int, bit: int, rank: int) -> None:
    server = _tcp.ServerHandshake(SECRET)
    resp = bytearray(_tcp.ClientHandshake(SECRET, rank).respond(server.challenge()))
    resp[pos] ^= 1 << bit
    with pytest.raises(_tcp.AuthError):
        server.check(bytes(resp))


@settings(max_examples=200, deadline=None)
@given(challenge=st.binary(max_size=100), reply=st.binary(max_size=100))
def test_fuzz_client_refuses_arbitrary_challenges_and_replies(challenge: bytes, reply: bytes) -> None:
    client = _tcp.ClientHandshake(SECRET, 1)
    try:
        client.respond(challenge)
    except _tcp.AuthError:
        return
    with pytest.raises(_tcp.AuthError):
        client.check(reply)


# -- the frame parser ---------------------------------------------------------------------------
messages = st.lists(
    st.tuples(st.integers(-(2**31), 2**31 - 1), st.lists(st.binary(max_size=300), max_size=5)),
    max_size=6,
)


@settings(max_examples=300, deadline=None)
@given(msgs=messages, cuts=st.lists(st.integers(0, 4000), max_size=12))
def test_fuzz_parser_roundtrip_in_any_chunking(msgs: list[tuple[int, list[bytes]]], cuts: list[int]) -> None:
    wire = b"".join(b"".join(bytes(v) for v in framing.encode(p, fr)) for p, fr in msgs)
    parser = framing.FrameParser(max_bytes=1 << 20)
    got = []
    prev = 0
    for c in sorted({min(c, len(wire)) for c in cuts} | {len(wire)}):
        got += parser.feed(wire[prev:c])
        prev = c
    assert [(p, [bytes(f) for f in fr]) for p, fr in got] == [(p, fr) for p, fr in msgs]
    assert not parser.mid_message


@settings(max_examples=200, deadline=None)
@given(size=st.integers((1 << 16) + 200, 1 << 18), split=st.integers(1, 200))
def test_parser_direct_reads_of_large_bodies(size: int, split: int) -> None:
    body = os.urandom(size)
    wire = b"".join(bytes(v) for v in framing.encode(3, [b"head", body]))
    parser = framing.FrameParser(max_bytes=1 << 20)
    out = parser.feed(wire[: 28 + split])
    assert out == []
    target = parser.direct()
    assert target is not None
    rest = wire[28 + split :]
    target[: len(rest)] = rest
    (peer, frames), = parser.advance(len(rest))
    assert peer == 3 and bytes(frames[0]) == b"head" and bytes(frames[1]) == body


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=600), chunk=st.integers(1, 64))
def test_fuzz_parser_never_exceeds_its_caps(data: bytes, chunk: int) -> None:
    parser = framing.FrameParser(max_bytes=256, max_frames=8)
    try:
        for i in range(0, len(data), chunk):
            for _, frames in parser.feed(data[i : i + chunk]):
                assert len(frames) <= 8 and sum(f.nbytes for f in frames) <= 256
            assert len(parser._body) <= 256 and len(parser._buf) <= 8 * 8 + 8
    except FrameError:
        pass


def test_parser_refuses_oversized_before_allocating() -> None:
    parser = framing.FrameParser(max_bytes=1 << 20)
    with pytest.raises(FrameError, match="exceeds"):
        parser.feed(framing._HDR.pack(0, 1) + framing._LEN.pack(1 << 62))
    with pytest.raises(FrameError, match="frames"):
        framing.FrameParser().feed(framing._HDR.pack(0, 2**32 - 1))
    # the sum counts, not only each frame
    with pytest.raises(FrameError):
        framing.FrameParser(max_bytes=100).feed(framing._HDR.pack(0, 2) + framing._LEN.pack(60) * 2)


# -- a live listener ----------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_listener_refuses_every_unauthenticated_attack(listener: Any, marker: Path) -> None:
    lst, log = listener
    addr = lst.address
    attacks: list[tuple[str, bytes]] = [(f"no key, payload {i}", p) for i, p in enumerate(payloads(marker))]
    attacks += [
        ("garbage", os.urandom(500)),
        ("magic then garbage", _tcp.MAGIC + os.urandom(200)),
        ("oversized frame header", framing._HDR.pack(0, 1) + framing._LEN.pack(1 << 62) + payloads(marker)[0]),
        ("zero-length handshake", b""),
    ]
    for name, data in attacks:
        with socket.create_connection(addr, timeout=5) as s:
            challenge = s.recv(_tcp.CHALLENGE_SIZE, socket.MSG_WAITALL)
            assert challenge.startswith(_tcp.MAGIC)
            send_quietly(s, data)
            assert refused(s), name
    # a wrong key, then the payload anyway
    with socket.create_connection(addr, timeout=5) as s:
        ch = s.recv(_tcp.CHALLENGE_SIZE, socket.MSG_WAITALL)
        send_quietly(s, _tcp.ClientHandshake(bytes(32), 1).respond(ch) + payloads(marker)[1])
        assert refused(s)
    assert log.got == [] and lst.refused >= len(attacks) + 1
    # the real thing still works afterwards
    ch = legit(lst, 1)
    assert log.event.wait(5) and log.got[0][0] == 1
    ch.close()


@pytest.mark.timeout(60)
def test_listener_refuses_a_replayed_handshake(listener: Any, marker: Path) -> None:
    lst, log = listener
    # record a genuine worker's answer on one connection, without completing it...
    with socket.create_connection(lst.address, timeout=5) as s:
        challenge = s.recv(_tcp.CHALLENGE_SIZE, socket.MSG_WAITALL)
        recorded = _tcp.ClientHandshake(SECRET, 2).respond(challenge)
    # ...and replay it (then a payload) on another: rank 2 is still expected, only the MAC fails
    with socket.create_connection(lst.address, timeout=5) as s:
        s.recv(_tcp.CHALLENGE_SIZE, socket.MSG_WAITALL)
        send_quietly(s, recorded + payloads(marker)[1])
        assert refused(s)
    assert log.got == []
    legit(lst, 2).close()
    assert log.event.wait(5) and log.got[0][0] == 2


@pytest.mark.timeout(60)
def test_listener_refuses_unexpected_and_duplicate_ranks(listener: Any) -> None:
    lst, log = listener
    with pytest.raises(_tcp.AuthError, match="refused"):
        legit(lst, 7)  # knows the key, but rank 7 was never launched
    legit(lst, 1).close()
    with pytest.raises(_tcp.AuthError, match="refused"):
        legit(lst, 1)  # rank 1 is taken
    assert [r for r, _ in log.got] == [1]


@pytest.mark.timeout(60)
def test_truncated_handshake_times_out_without_blocking_others(listener: Any, marker: Path) -> None:
    lst, log = listener
    silent = socket.create_connection(lst.address, timeout=5)
    challenge = silent.recv(_tcp.CHALLENGE_SIZE, socket.MSG_WAITALL)
    half = _tcp.ClientHandshake(SECRET, 2).respond(challenge)[:40]
    silent.sendall(half)
    t0 = time.monotonic()
    legit(lst, 1).close()  # served while the other handshake is stuck
    assert time.monotonic() - t0 < 1.0
    assert refused(silent, timeout=5)  # handshake_timeout is 1 s
    silent.close()
    assert [r for r, _ in log.got] == [1]


@pytest.mark.timeout(120)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=300))
def test_fuzz_listener_with_random_bytes(listener: Any, marker: Path, data: bytes) -> None:
    lst, log = listener
    with socket.create_connection(lst.address, timeout=5) as s:
        s.recv(_tcp.CHALLENGE_SIZE, socket.MSG_WAITALL)
        send_quietly(s, data + payloads(marker)[1])
        try:
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        assert refused(s)
    assert log.got == []


# -- rank 0's transport after authentication ----------------------------------------------------
@pytest.fixture
def hub() -> Iterator[tuple[_tcp.TcpHubTransport, list[_tcp.TcpChannel]]]:
    """A hub of size 3 with two authenticated raw client channels (ranks 1 and 2)."""
    hub = _tcp.TcpHubTransport(3)
    log = AuthLog()
    lst = _tcp.Listener(SECRET, "127.0.0.1", on_auth=log, max_frame_bytes=1 << 16)
    hub.listener = lst
    lst.expect([1, 2])
    clients = [
        _tcp.connect(*lst.address, SECRET, r, max_frame_bytes=1 << 16) for r in (1, 2)
    ]
    end = time.monotonic() + 5
    while len(log.got) < 2 and time.monotonic() < end:
        time.sleep(0.01)
    for rank, ch in log.got:
        hub.add(rank, ch)
    try:
        yield hub, clients
    finally:
        hub.close()
        for c in clients:
            c.close()


def drain(hub: _tcp.TcpHubTransport, seconds: float) -> list[Any]:
    out = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        got = hub.recv(0.05)
        if got is not None:
            out.append(got)
    return out


@pytest.mark.timeout(60)
def test_oversized_frame_from_an_authenticated_peer_drops_it(hub: Any, marker: Path) -> None:
    h, (c1, c2) = hub
    p = pickle.dumps(Mark(marker))
    c1.conn.send([memoryview(framing._HDR.pack(0, 2) + framing._LEN.pack(len(p)) + framing._LEN.pack(1 << 17) + p)])
    c2.send(0, [b"still here"])
    got = drain(h, 1.0)
    assert (1, None) in got  # rank 1 is reported lost; its frames were never delivered
    assert [bytes(f[0]) for r, f in got if r == 2 and f is not None] == [b"still here"]
    assert all(f is None for r, f in got if r == 1)
    with pytest.raises(FrameError):  # and we refuse to send one ourselves
        c2.send(0, [bytes(1 << 17)])


@pytest.mark.timeout(60)
def test_half_sent_frame_never_blocks_rank_0(hub: Any, marker: Path) -> None:
    h, (c1, c2) = hub
    wire = b"".join(bytes(v) for v in framing.encode(0, [pickle.dumps(Mark(marker))]))
    c1.conn.send([memoryview(wire[: len(wire) // 2])])  # ...and then silence
    t0 = time.monotonic()
    assert drain(h, 0.3) == []
    assert time.monotonic() - t0 < 1.0
    c2.send(0, [b"ping"])
    got = drain(h, 0.5)
    assert [(r, bytes(f[0])) for r, f in got] == [(2, b"ping")]
    c1.close()  # the dying peer: its half frame is discarded, its loss reported
    assert drain(h, 0.5) == [(1, None)]


@pytest.mark.timeout(60)
def test_misaddressed_frame_drops_the_peer(hub: Any) -> None:
    h, (c1, c2) = hub
    c1.send(9, [b"to nobody"])
    assert drain(h, 0.5) == [(1, None)]


@pytest.mark.timeout(60)
def test_frames_are_forwarded_between_workers_unopened(hub: Any, marker: Path) -> None:
    h, (c1, c2) = hub
    p = pickle.dumps(Mark(marker))
    c1.send(2, [p, b"x"])
    end = time.monotonic() + 5
    got = None
    while got is None and time.monotonic() < end:
        h.recv(0.05)
        msgs, err, _ = c2.pump()
        assert err is None
        if msgs:
            got = msgs[0]
    assert got is not None and got[0] == 1 and bytes(got[1][0]) == p


# -- a whole executor ---------------------------------------------------------------------------
@pytest.mark.timeout(120)
def test_running_executor_survives_attacks_on_its_port(marker: Path) -> None:
    with DTMExecutor(2, transport="tcp") as ex:
        addr = ex._pool.address
        assert addr[0] == "127.0.0.1"  # local-only runs listen on loopback
        for data in payloads(marker) + [os.urandom(100)]:
            with socket.create_connection(addr, timeout=5) as s:
                s.recv(_tcp.CHALLENGE_SIZE, socket.MSG_WAITALL)
                send_quietly(s, data)
                assert refused(s)
        with socket.create_connection(addr, timeout=5) as s:
            ch = s.recv(_tcp.CHALLENGE_SIZE, socket.MSG_WAITALL)
            send_quietly(s, _tcp.ClientHandshake(os.urandom(32), 1).respond(ch) + payloads(marker)[1])
            assert refused(s)
        assert list(ex.map(square, range(20))) == [x * x for x in range(20)]
        assert ex.submit(fib, 12).result(timeout=60) == 144


# -- a real worker against a fake rank 0 ---------------------------------------------------------
def _fake_rank0(reply: Any, marker: Path) -> tuple[socket.socket, threading.Thread, list[bytes]]:
    srv = socket.create_server(("127.0.0.1", 0))
    seen: list[bytes] = []

    def serve() -> None:
        srv.settimeout(20)
        try:
            c, _ = srv.accept()
        except OSError:
            return
        with c:
            c.settimeout(20)
            server = _tcp.ServerHandshake(os.urandom(32))  # does not know the run's key
            c.sendall(server.challenge())
            resp = c.recv(_tcp.RESPONSE_SIZE, socket.MSG_WAITALL)
            seen.append(resp)
            init = b"".join(bytes(v) for v in framing.encode(0, [pickle.dumps(1), pickle.dumps(Mark(marker)),
                                                              pickle.dumps(Mark(marker))]))
            try:
                c.sendall(reply(resp) + init)
                c.recv(100)
            except OSError:
                pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return srv, t, seen


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["garbage", "replayed"])
def test_worker_refuses_a_fake_rank_0(kind: str, marker: Path) -> None:
    # a genuine rank 0 proof, recorded from another session, is useless to the fake
    s0, c0 = _tcp.ServerHandshake(SECRET), _tcp.ClientHandshake(SECRET, 1)
    _, recorded = s0.check(c0.respond(s0.challenge()))
    reply = (lambda resp: os.urandom(32)) if kind == "garbage" else (lambda resp: recorded)
    srv, t, seen = _fake_rank0(reply, marker)
    cfg = {"v": 1, "host": "127.0.0.1", "port": srv.getsockname()[1], "rank": 1, "secret": SECRET.hex(),
           "tls": None, "connect_timeout": 5, "handshake_timeout": 5, "max_frame_bytes": 1 << 20}
    proc = subprocess.Popen([sys.executable, "-c", "from dtm_executor._transports.tcp import worker_main; worker_main()"],
                            stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(cfg).encode() + b"\n")
        proc.stdin.flush()  # and kept open: a worker exits when its standard input closes
        proc.wait(30)
        assert proc.stderr is not None
        err = proc.stderr.read()
    finally:
        proc.stdin.close()  # type: ignore[union-attr]
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        srv.close()
        t.join(5)
    assert proc.returncode == 3, err
    assert b"did not prove knowledge of the key" in err
    assert seen and seen[0].startswith(_tcp.MAGIC)


# -- TLS ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    if not shutil.which("openssl"):
        pytest.skip("the openssl command is needed to make test certificates")
    d = tmp_path_factory.mktemp("certs")
    out = {}
    for name in ("a", "b"):
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", str(d / f"{name}.key"), "-out", str(d / f"{name}.pem"),
             "-days", "2", "-subj", f"/CN=dtm-test-{name}"],
            check=True, capture_output=True, timeout=60,
        )
        out[name] = str(d / f"{name}.pem")
        out[name + "key"] = str(d / f"{name}.key")
    return out


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mutual", [False, True])
def test_tls_run(certs: dict[str, str], mutual: bool) -> None:
    kw = dict(tls_cert=certs["a"], tls_key=certs["akey"])
    if mutual:
        kw["tls_ca"] = certs["a"]
    with DTMExecutor(2, transport="tcp", **kw) as ex:
        assert list(ex.map(square, range(30))) == [x * x for x in range(30)]
        assert ex.submit(fib, 12).result(timeout=60) == 144
        big = bytes(range(256)) * 20000  # several TLS records per frame
        assert ex.submit(bytes.__len__, big).result(timeout=60) == len(big)
        assert all(ch.conn.tls for ch in ex._pool.transport.channels.values())


@pytest.mark.timeout(60)
def test_tls_listener_refuses_plain_and_untrusted_clients(certs: dict[str, str], marker: Path) -> None:
    log = AuthLog()
    server = _tcp.server_context(certs["a"], certs["akey"], ca=certs["a"])
    lst = _tcp.Listener(SECRET, "127.0.0.1", on_auth=log, tls=server, handshake_timeout=2)
    lst.expect([1])
    try:
        with socket.create_connection(lst.address, timeout=5) as s:  # no TLS at all
            send_quietly(s, b"".join(payloads(marker)))
            assert refused(s)
        # a client that trusts another certificate refuses rank 0
        with pytest.raises((OSError, ConnectionError, EOFError, ValueError)):  # ssl.SSLError is an OSError
            _tcp.connect(*lst.address, SECRET, 1, tls=_tcp.client_context(ca=certs["b"]), handshake_timeout=5)
        # a client with the right trust but a certificate rank 0 does not accept is refused
        with pytest.raises((OSError, ConnectionError, EOFError, ValueError)):
            _tcp.connect(*lst.address, SECRET, 1,
                         tls=_tcp.client_context(cert=certs["b"], key=certs["bkey"], ca=certs["a"]),
                         handshake_timeout=5)
        assert log.got == []
        ch = _tcp.connect(*lst.address, SECRET, 1, handshake_timeout=5,
                          tls=_tcp.client_context(cert=certs["a"], key=certs["akey"], ca=certs["a"]))
        assert ch.conn.tls and log.event.wait(5)
        ch.close()
    finally:
        lst.close()
        for _, c in log.got:
            c.close()

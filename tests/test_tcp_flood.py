"""A flood of junk connections on rank 0's port must not stop a TCP run (issue 8, item 11).

The flood comes from another process, as it would from another program on the machine or from
another host: thousands of connections that are held open silently, that send garbage, or that
send the protocol's magic and then stall. Meanwhile a 3-worker executor starts on that fixed
port and runs tasks; the refusals are counted, and logged a bounded number of times.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from dtm_executor import DTMExecutor, current_executor
from dtm_executor._transports import tcp as _tcp

FLOOD = r'''
import os, socket, sys, time
port, stop, hold_max = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
MAGIC = b"DTMXTCP1"
held, made, failed = [], 0, 0
end = time.monotonic() + 120  # never outlive a broken test
print("flooding", flush=True)
while time.monotonic() < end and not os.path.exists(stop):
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=0.2)
    except OSError:
        failed += 1
        if failed % 50 == 0:
            time.sleep(0.01)  # not listening yet (or the backlog is full): try again
        continue
    made += 1
    kind = made % 4
    try:
        if kind == 1:  # garbage, then hang up
            s.send(os.urandom(64))
            s.close()
            continue
        if kind == 2:  # garbage, then hold
            s.send(os.urandom(200))
        elif kind == 3:  # the start of a genuine answer, then silence
            s.send(MAGIC + b"\x01\x00\x00\x00")
    except OSError:
        s.close()
        continue
    held.append(s)  # kind 0: connect and hold, silent
    if len(held) > hold_max:
        held.pop(0).close()
for s in held:
    s.close()
print("made", made, "failed", failed, flush=True)
'''


def square(x: int) -> int:
    return x * x


def fib(n: int) -> int:
    if n < 2:
        return n
    ex = current_executor()
    a, b = ex.submit(fib, n - 1), ex.submit(fib, n - 2)
    return a.result() + b.result()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Flood:
    def __init__(self, port: int, stop: Path, hold_max: int = 3000) -> None:
        self.stop = stop
        self.proc = subprocess.Popen([sys.executable, "-c", FLOOD, str(port), str(stop), str(hold_max)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "flooding"
        self.made = 0

    def end(self) -> str:
        self.stop.touch()
        try:
            out, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        words = out.split()
        if "made" in words:
            self.made = int(words[words.index("made") + 1])
        return out + err


@pytest.fixture
def flood(tmp_path: Path) -> Iterator[tuple[int, Flood]]:
    port = _free_port()
    f = Flood(port, tmp_path / "stop")
    try:
        yield port, f
    finally:
        f.end()


def _refusal_lines(caplog: pytest.LogCaptureFixture, err: str) -> list[str]:
    lines = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    return lines + [ln for ln in err.splitlines() if "refused" in ln or "cannot connect" in ln]


@pytest.mark.timeout(180)
def test_tcp_start_on_a_fixed_port_survives_a_connection_flood(
    flood: tuple[int, Flood], caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    port, f = flood
    caplog.set_level(logging.DEBUG, logger="dtm_executor")
    time.sleep(0.5)  # the flood is already knocking when the executor starts listening
    with DTMExecutor(3, transport="tcp", port=port, start_timeout=60) as ex:
        lst = ex._pool.transport.listener
        assert lst.address[1] == port
        for _ in range(3):  # the flood goes on while tasks run
            assert list(ex.map(square, range(200))) == [x * x for x in range(200)]
            assert ex.submit(fib, 12).result(timeout=60) == 144
            time.sleep(0.5)
        refused = lst.refused
    f.end()
    err = capfd.readouterr().err
    assert f.made >= 1000, f"the flood made only {f.made} connections"
    assert refused >= 500, f"only {refused} connections were refused"
    lines = _refusal_lines(caplog, err)
    # one line at the first refusal, then one summary per interval (10 s), and one at close
    assert 1 <= len(lines) <= 12, "\n".join(lines[:40])
    assert any(str(port) in ln or "refused" in ln for ln in lines)


def _connect_like_a_worker(port: int, secret: bytes, rank: int, patience: float = 30.0) -> _tcp.TcpChannel:
    """Connect and authenticate, trying again while rank 0 turns us away, as a worker does."""
    end = time.monotonic() + patience
    while True:
        try:
            return _tcp.connect("127.0.0.1", port, secret, rank, connect_timeout=5, handshake_timeout=10)
        except (OSError, EOFError):  # refused, reset, closed before the end of the handshake
            if time.monotonic() > end:
                raise
            time.sleep(0.1)


@pytest.mark.timeout(120)
def test_a_bare_listener_lets_expected_ranks_in_through_a_flood(flood: tuple[int, Flood]) -> None:
    """The same with the listener alone: each expected rank authenticates, strangers do not."""
    port, f = flood
    got: dict[int, Any] = {}
    secret = os.urandom(32)
    lst = _tcp.Listener(secret, "127.0.0.1", port, on_auth=lambda r, ch, a: got.setdefault(r, ch))
    try:
        lst.expect([1, 2, 3, 4, 5])
        time.sleep(1.0)  # the flood fills the pending handshakes
        for r in (1, 2, 3, 4, 5):
            _connect_like_a_worker(port, secret, r).close()
        end = time.monotonic() + 10
        while len(got) < 5 and time.monotonic() < end:
            time.sleep(0.05)
        assert sorted(got) == [1, 2, 3, 4, 5]
        assert lst.refused >= 100
    finally:
        lst.close()
        for ch in got.values():
            ch.close()


@pytest.mark.timeout(120)
def test_a_flood_from_one_host_never_drops_a_handshake_from_another(flood: tuple[int, Flood]) -> None:
    """Eviction takes the oldest handshake of the busiest address: a worker on another host may
    take its time to answer while one host floods the port (here 127.0.0.2 vs 127.0.0.1)."""
    port, f = flood
    got: dict[int, Any] = {}
    secret = os.urandom(32)
    lst = _tcp.Listener(secret, "127.0.0.1", port, on_auth=lambda r, ch, a: got.setdefault(r, ch),
                        max_pending=32, handshake_timeout=60)
    try:
        lst.expect([7])
        with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=("127.0.0.2", 0)) as s:
            challenge = s.recv(_tcp.CHALLENGE_SIZE, socket.MSG_WAITALL)
            start = lst.refused
            end = time.monotonic() + 30
            while lst.refused < start + 500 and time.monotonic() < end:  # many evictions meanwhile
                time.sleep(0.1)
            assert lst.refused >= start + 500, "the flood did not get going"
            client = _tcp.ClientHandshake(secret, 7)
            s.sendall(client.respond(challenge))
            client.check(s.recv(_tcp.REPLY_SIZE, socket.MSG_WAITALL))
            end = time.monotonic() + 10
            while 7 not in got and time.monotonic() < end:
                time.sleep(0.05)
            assert 7 in got
    finally:
        lst.close()
        for ch in got.values():
            ch.close()

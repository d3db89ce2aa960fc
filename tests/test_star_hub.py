"""Rank 0's end of the local transport (the star of `framing`, shared with TCP), on real socket
pairs: it forwards frames between workers unopened, and a message addressed to a rank outside
the run drops its sender's connection, logged, as TCP does (tests/test_tcp_security.py)."""

from __future__ import annotations

import logging
import select
import socket
import time
from typing import Any, Iterator

import pytest

from dtm_executor._transports.framing import LocalChannel
from dtm_executor._transports.local import LocalHubTransport

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def star() -> Iterator[tuple[LocalHubTransport, list[LocalChannel]]]:
    """Rank 0's end with two workers (ranks 1 and 2), whose ends the test holds."""
    hub = LocalHubTransport(2)
    workers = []
    for rank in (1, 2):
        a, b = socket.socketpair()
        hub.add(rank, LocalChannel(a, pass_fds=True))
        workers.append(LocalChannel(b, pass_fds=True))
    try:
        yield hub, workers
    finally:
        hub.close()
        for w in workers:
            w.close()


def drain(hub: LocalHubTransport, seconds: float) -> list[Any]:
    out = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        got = hub.recv(0.05)
        if got is not None:
            out.append((got[0], None if got[1] is None else [bytes(f) for f in got[1]]))
    return out


@pytest.mark.parametrize("dest", [9, 3, -1])
def test_a_message_for_a_rank_outside_the_run_drops_its_sender(star: Any, dest: int, caplog: Any) -> None:
    hub, (w1, w2) = star
    caplog.set_level(logging.WARNING, logger="dtm_executor")
    w1.send(0, [b"before"])
    w1.send(dest, [b"to nobody"])
    w2.send(0, [b"still here"])
    got = drain(hub, 0.5)
    assert (1, [b"before"]) in got and (1, None) in got and (2, [b"still here"]) in got
    assert got.index((1, [b"before"])) < got.index((1, None))
    assert [r.getMessage() for r in caplog.records] == [
        f"dropping the connection of rank 1: FrameError: rank 1 addressed a message to rank {dest}"]
    with pytest.raises(OSError):  # and nothing more goes to it
        hub.send(1, [b"x"])


def test_frames_between_workers_are_forwarded_unopened(star: Any) -> None:
    hub, (w1, w2) = star
    big = bytes(range(256)) * 8192  # 2 MiB: through shared memory
    w1.send(2, [b"not a pickle", big])
    assert drain(hub, 0.3) == []  # nothing of it for rank 0, which routes it
    assert select.select([w2.sock], [], [], 10)[0], "nothing forwarded"
    peer, frames = w2.recv()
    assert peer == 1 and bytes(frames[0]) == b"not a pickle" and bytes(frames[1]) == big


def test_a_worker_that_goes_away_is_reported_once_and_quietly(star: Any, caplog: Any) -> None:
    hub, (w1, w2) = star
    caplog.set_level(logging.DEBUG, logger="dtm_executor")
    w1.close()
    assert drain(hub, 0.3) == [(1, None)]
    assert not caplog.records  # the executor names the lost process, with its exit status

"""``shutdown(wait=False)`` followed by ``shutdown()`` (as a ``with`` block or a fixture does after
the program asked for a quick stop): the pool is torn down once, and the waiting call returns only
when it is down, as ``concurrent.futures`` promises."""

from __future__ import annotations

import os

import pytest

from dtm_executor import DTMExecutor
from dtm_executor._transports.framing import Waker


@pytest.mark.timeout(180)
def test_shutdown_no_wait_then_wait_returns_when_the_workers_are_gone(proctools):
    for _ in range(6):
        ex = DTMExecutor(2)
        pids = [p.pid for p in ex._pool.procs.values()]
        assert ex.submit(abs, -3).result(timeout=30) == 3
        ex.shutdown(wait=False)
        ex.shutdown(wait=True)
        assert not [p for p in pids if proctools.pid_alive(p)], "shutdown(wait=True) returned early"
        # the next executor is not disturbed by the last one's teardown (a second close of its
        # file descriptors would hit the new one's)
        with DTMExecutor(1) as again:
            assert again.submit(abs, -4).result(timeout=30) == 4


def test_waker_closes_once_and_never_writes_after_close():
    wk = Waker()
    wk.close()
    r, w = os.pipe()  # likely reuses the waker's numbers
    try:
        wk.wake()
        wk.close()
        os.write(w, b"ok")
        assert os.read(r, 10) == b"ok"  # still open, and nothing else was written into it
    finally:
        os.close(r)
        os.close(w)

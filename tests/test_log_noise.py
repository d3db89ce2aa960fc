"""Logging never hides the output that matters: an exception that reaches its future is not
printed (the standard library prints nothing either), user data enters a log line only cut short,
and events that can repeat thousands of times are summarized."""

from __future__ import annotations

import logging
import time

import pytest

from dtm_executor import _log

# -- what a program prints --------------------------------------------------------------------
FAILING_TASKS = """
import logging, sys
from concurrent import futures
from dtm_executor import DTMExecutor, current_executor
{setup}

def fail(msg):
    raise ValueError(msg)

def item(x):
    if x % 7 == 3:
        raise KeyError(f"item {{x}}")
    return x

def parent_catches():
    f = current_executor().submit(fail, "caught by its parent")
    try:
        f.result()
    except ValueError:
        return "handled"

def parent_fails():
    return current_executor().submit(fail, "reaches the root").result()

if __name__ == "__main__":
    with DTMExecutor(2) as ex:
        fs = [ex.submit(fail, f"boom {{i}}") for i in range(50)]
        print(sum(isinstance(f.exception(timeout=60), ValueError) for f in fs))
        try:
            list(ex.map(item, range(100), chunksize=10))
        except KeyError as e:
            print("map raised", e)
        print(ex.submit(parent_catches).result(timeout=60))
        try:
            ex.submit(parent_fails).result(timeout=60)
        except ValueError as e:
            print("nested raised", e)
        ignored = ex.submit(fail, "nobody looks")  # never retrieved: not printed either
        futures.wait([ignored], timeout=60)
    print("done")
"""


@pytest.mark.timeout(180)
@pytest.mark.parametrize("setup", ["", "logging.basicConfig()"], ids=["no-config", "basicConfig"])
def test_exceptions_that_reach_their_futures_print_nothing(run_script, setup):
    run = run_script(FAILING_TASKS.format(setup=setup))
    assert run.wait(120) == 0, run.stderr
    assert run.stdout.splitlines() == [
        "50", "map raised 'item 3'", "handled", "nested raised reaches the root", "done"
    ]
    assert run.stderr == ""


HUGE_MESSAGE = """
import logging
from dtm_executor import DTMExecutor, current_executor
logging.basicConfig(level=logging.DEBUG)  # at import: the workers log at DEBUG too

def fail(n):
    raise ValueError("x" * n)

def fail_item(x):
    raise ValueError("y" * 5_000_000)

def parent(n):
    return current_executor().submit(fail, n).result()

if __name__ == "__main__":
    with DTMExecutor(2) as ex:
        try:
            ex.submit(fail, 100_000_000).result(timeout=120)
        except ValueError as e:
            print("top", len(str(e)))
        try:
            list(ex.map(fail_item, range(4), chunksize=2))
        except ValueError as e:
            print("map", len(str(e)))
        try:
            ex.submit(parent, 5_000_000).result(timeout=120)
        except ValueError as e:
            print("nested", len(str(e)))
"""


@pytest.mark.timeout(300)
def test_a_huge_exception_message_is_not_copied_to_the_log(run_script):
    run = run_script(HUGE_MESSAGE)
    assert run.wait(240) == 0, run.stderr[-3000:]
    assert run.stdout.splitlines() == ["top 100000000", "map 5000000", "nested 5000000"]
    assert len(run.stderr) < 20_000, f"{len(run.stderr):,} characters on stderr"
    # DEBUG is on: the failures are logged, each cut short
    assert "[100,000,000 characters in all]" in run.stderr
    assert "[5,000,000 characters in all]" in run.stderr


DEEP_CHAIN = """
import sys
from dtm_executor import DTMExecutor, current_executor

def chain(n):
    if n == 0:
        raise ValueError("the leaf failed")
    return current_executor().submit(chain, n - 1).result()

if __name__ == "__main__":
    with DTMExecutor(2) as ex:
        try:
            ex.submit(chain, int(sys.argv[1])).result(timeout=240)
        except ValueError as e:
            print("caught", e)
"""


@pytest.mark.timeout(300)
def test_a_failing_deep_chain_prints_nothing(run_script):
    run = run_script(DEEP_CHAIN, "2000")
    assert run.wait(280) == 0, run.stderr[-3000:]
    assert run.stdout == "caught the leaf failed\n"
    assert run.stderr.count("\n") <= 2, f"{run.stderr.count(chr(10))} lines on stderr:\n{run.stderr[:2000]}"


OVERSIZED_RESULTS = """
from dtm_executor import DTMExecutor, SerializationError

if __name__ == "__main__":
    with DTMExecutor(2, transport="tcp", max_frame_bytes=1 << 16) as ex:
        fs = [ex.submit(bytes, 100_000) for _ in range(300)]  # results over the limit
        print(sum(isinstance(f.exception(timeout=60), SerializationError) for f in fs))
        print(ex.submit(len, b"ok").result(timeout=60))
"""


@pytest.mark.timeout(180)
def test_messages_over_the_frame_limit_are_reported_once_per_interval(run_script):
    run = run_script(OVERSIZED_RESULTS)
    assert run.wait(120) == 0, run.stderr[-3000:]
    assert run.stdout.splitlines() == ["300", "2"]
    lines = run.stderr.splitlines()
    # one line per worker (each logs on its own stderr), not one or two per message
    assert 1 <= len(lines) <= 4, f"{len(lines)} lines on stderr:\n{run.stderr[:2000]}"
    assert all("could not be sent" in ln for ln in lines), run.stderr[:3000]


# -- the helpers ------------------------------------------------------------------------------
class Loud:
    calls = 0

    def __str__(self) -> str:
        Loud.calls += 1
        return "L" * 10_000

    __repr__ = __str__


class Broken:
    def __str__(self) -> str:
        raise RuntimeError("no")

    __repr__ = __str__


def test_brief_cuts_user_data_and_formats_only_when_emitted(caplog):
    caplog.set_level(logging.INFO, logger="dtm_executor")
    huge = ValueError("z" * 10_000_000)
    assert len(str(_log.brief_exc(huge))) < 300
    assert str(_log.brief_exc(huge)).startswith("ValueError: zzz")
    assert str(_log.brief_exc(KeyError())) == "KeyError"
    assert len(str(_log.brief(Loud()))) < 300
    assert len(str(_log.brief_repr(list(range(1_000_000))))) < 300
    assert len(str(_log.brief_repr("q" * 1_000_000))) < 300
    assert "unprintable" in str(_log.brief(Broken()))
    assert "Broken" in str(_log.brief_repr(Broken()))  # reprlib says it failed
    Loud.calls = 0
    logging.getLogger("dtm_executor").debug("%s", _log.brief(Loud()))  # not emitted: not formatted
    assert Loud.calls == 0
    logging.getLogger("dtm_executor").info("%s", _log.brief(Loud()))
    assert Loud.calls >= 1  # once per handler that emits it
    assert len(caplog.records[-1].getMessage()) < 300


def test_every_summarizes_a_flood(caplog):
    caplog.set_level(logging.WARNING, logger="dtm_executor")
    every = _log.Every(0.5)
    t0 = time.monotonic()
    for i in range(10_000):
        every(logging.WARNING, "refused %d", i)
    elapsed = time.monotonic() - t0
    first = [r.getMessage() for r in caplog.records]
    assert 1 <= len(first) <= 2 + elapsed / 0.5
    assert first[0] == "refused 0"
    time.sleep(0.6)
    every(logging.WARNING, "refused %d", 10_000)
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs[-1].startswith("refused 10000 (") and "more like this" in msgs[-1]
    shown = len(msgs)
    left_out = sum(int(m.split("(")[1].split()[0]) for m in msgs if "more like this" in m)
    assert shown + left_out == 10_001
    every(logging.DEBUG, "not enabled")  # below the logger's level: neither shown nor counted
    assert len(caplog.records) == shown

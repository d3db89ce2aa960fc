"""The bookkeeping behind ``waitAll``/``waitAny``/``testAll``/``testAny`` without ``reqList``:
whose requests they consider (the current task's: outside tasks, the root task of the executor),
and which one is "the last finished"."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from dtm_executor import dtm
from dtm_executor import _options

pytestmark = pytest.mark.timeout(120)


def sq(x):
    return x * x


def wait_file(path, value=None, timeout=60.0):
    """Block until ``path`` exists (a cross-process event), then return ``value``."""
    end = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > end:
            raise TimeoutError(f"{path} was never created")
        time.sleep(0.005)
    return value


@pytest.fixture(autouse=True)
def _clean_options() -> Iterator[None]:
    _options.reset_global()
    yield
    _options.reset_global()


@pytest.fixture
def gate(tmp_path: Path) -> Iterator[Any]:
    """Factory of event paths; all are created at teardown so no worker stays blocked."""
    made: list[Path] = []

    def make() -> str:
        p = tmp_path / f"gate-{len(made)}"
        made.append(p)
        return str(p)

    yield make
    for p in made:
        p.touch()


def _returns_within(fn: Any, seconds: float) -> list[Any]:
    """Run ``fn`` in a thread; [its result] if it returned within ``seconds``, else []."""
    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    t.start()
    t.join(seconds)
    return out


# -- 1. whose requests: the root task of each executor -----------------------------------------
def test_a_new_executor_does_not_see_the_requests_of_an_older_one(make_executor, gate):
    ex1 = make_executor(1)
    done = ex1.apply_async(sq, 3)
    done.wait()
    g = gate()
    pending = ex1.apply_async(wait_file, g, "late")
    assert ex1.testAny() is done and not ex1.testAll()

    ex2 = make_executor(1)  # same thread, later: a root task of its own
    assert ex2.testAny() is None
    assert ex2.testAll() is True
    assert ex2.waitAny() is None
    assert _returns_within(ex2.waitAll, 30) == [None]  # does not wait for ex1's pending request
    # dtm.* outside tasks: the current executor (the most recent one) and its root task
    assert dtm.testAny() is None and dtm.testAll() is True and dtm.waitAny() is None

    mine = ex2.apply_async(sq, 4)
    mine.wait()
    assert ex2.testAny() is mine and dtm.testAny() is mine and ex2.testAll()
    assert ex1.testAny() is done and not ex1.testAll()  # ex1's own are still its own
    Path(g).touch()
    ex1.waitAll()
    assert pending.get() == "late" and ex1.testAll()
    assert ex1.testAny() is pending and ex2.testAny() is mine


def test_dtm_start_runs_are_separate_root_tasks():
    def first():
        r = dtm.apply_async(sq, 2)
        r.wait()
        return dtm.testAny() is r

    def second():
        return dtm.testAny(), dtm.testAll(), dtm.waitAny()

    dtm.setOptions(max_workers=1)
    assert dtm.start(first) is True
    dtm.setOptions(max_workers=1)
    assert dtm.start(second) == (None, True, None)

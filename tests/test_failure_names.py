"""Failures name what failed: a map item by its index in the input (not inside its chunk), and a
task whose function cannot be unpickled on the worker by that function's name (not ``?``)."""

from __future__ import annotations

import logging
import pickle
import sys
import textwrap
import time

import cloudpickle
import pytest

from dtm_executor import SerializationError, current_executor, dtm
from dtm_executor import _serial

pytestmark = pytest.mark.timeout(120)

NOTES = sys.version_info >= (3, 11)  # exception notes (add_note) exist from 3.11


def fail_at_37(x):
    if x == 37:
        raise ValueError(f"bad item {x}")
    return x


def nested_map(chunksize):
    return list(current_executor().map(fail_at_37, range(100), chunksize=chunksize))


def _item_lines(caplog) -> list[str]:
    """The log lines about item 37 (logged as its chunk settles, possibly just after the map
    raised in the consumer: wait for them a little)."""
    def lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if "raised ValueError: bad item 37" in r.getMessage()]

    end = time.monotonic() + 10
    while not lines() and time.monotonic() < end:
        time.sleep(0.01)
    time.sleep(0.05)  # (a second line, which must not come, would come now)
    return lines()


@pytest.mark.parametrize("chunksize", [10, 7, None])
def test_a_map_failure_names_the_input_index(ex2, caplog, chunksize):
    caplog.set_level(logging.DEBUG, logger="dtm_executor")  # failures that reach the caller: DEBUG
    with pytest.raises(ValueError, match="bad item 37") as info:
        list(ex2.map(fail_at_37, range(100), chunksize=chunksize))
    lines = _item_lines(caplog)
    assert len(lines) == 1 and " item 37 raised ValueError" in lines[0], lines
    if NOTES:
        assert "(item 37 of the map's input)" in info.value.__notes__


@pytest.mark.parametrize(
    "call",
    [
        lambda ex: ex.map_async(fail_at_37, range(100)).get(),
        lambda ex: list(ex.imap(fail_at_37, range(100), chunksize=9)),
        lambda ex: list(ex.starmap(fail_at_37, ((i,) for i in range(100)), chunksize=9)),
        lambda ex: dtm.map(fail_at_37, range(100)),
    ],
    ids=["map_async", "imap", "starmap", "dtm.map"],
)
def test_every_kind_of_map_names_the_input_index(ex2, caplog, call):
    caplog.set_level(logging.DEBUG, logger="dtm_executor")  # failures that reach the caller: DEBUG
    with pytest.raises(ValueError, match="bad item 37") as info:
        call(ex2)
    lines = _item_lines(caplog)
    assert len(lines) == 1 and " item 37 raised ValueError" in lines[0], lines
    if NOTES:
        assert "(item 37 of the map's input)" in info.value.__notes__


@pytest.mark.skipif(not NOTES, reason="exception notes need Python 3.11+")
def test_a_nested_map_failure_names_the_input_index(ex2):
    with pytest.raises(ValueError, match="bad item 37") as info:
        ex2.submit(nested_map, 10).result(timeout=60)
    assert "(item 37 of the map's input)" in info.value.__notes__


# -- unpickling failures name the function ------------------------------------------------------
def test_pickled_name_reads_the_function_without_unpickling_it():
    def inner(x):
        return x

    pickled_name = _serial.pickled_name

    assert pickled_name(pickle.dumps(fail_at_37, 5)) == f"{__name__}.fail_at_37"
    assert pickled_name(pickle.dumps(fail_at_37, 0)) == f"{__name__}.fail_at_37"
    assert pickled_name(cloudpickle.dumps(inner, 5)) == (
        f"{__name__}.test_pickled_name_reads_the_function_without_unpickling_it.<locals>.inner")
    assert pickled_name(b"") is None and pickled_name(b"not a pickle") is None


def test_a_function_missing_on_the_worker_is_named(make_executor, tmp_path, monkeypatch):
    ex = make_executor(1)  # its worker's sys.path is fixed now: it cannot import what follows
    (tmp_path / "only_on_rank0.py").write_text("def helper(x):\n    return x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "only_on_rank0", raising=False)
    import only_on_rank0

    with pytest.raises(SerializationError, match=r"task #\d+ \(only_on_rank0\.helper\) from rank 0: "
                                                 r"cannot unpickle its function on rank 1") as info:
        ex.submit(only_on_rank0.helper, 1).result(timeout=60)
    assert "(?)" not in str(info.value.__cause__)
    assert "(only_on_rank0.helper) raised on rank 1" in str(info.value.__cause__)
    with pytest.raises(SerializationError, match=r"\(only_on_rank0\.helper\)"):
        list(ex.map(only_on_rank0.helper, range(5)))


def test_the_run_summary_names_a_function_that_could_not_be_unpickled(run_script):
    run = run_script(textwrap.dedent('''
        import os, sys, tempfile
        from dtm_executor import DTMExecutor

        if __name__ == "__main__":
            with DTMExecutor(1, print_summary=True) as ex:
                # a module only this process can import (the worker's sys.path is fixed now)
                d = tempfile.mkdtemp()
                with open(os.path.join(d, "only_here.py"), "w") as f:
                    f.write("def guarded(x):\\n    return x\\n")
                sys.path.insert(0, d)
                from only_here import guarded
                try:
                    ex.submit(guarded, 1).result(timeout=60)
                except Exception as e:
                    print("ERROR", e)
                    print("CAUSE", e.__cause__)
    '''))
    assert run.wait(90) == 0, run.stderr
    out = run.stdout
    assert "ERROR task #1 (only_here.guarded) from rank 0: cannot unpickle its function" in out
    assert "task #1 (only_here.guarded) raised on rank 1" in out
    summary = out[out.index("dtm_executor run summary"):]
    assert "only_here.guarded" in summary and "\n?  " not in summary

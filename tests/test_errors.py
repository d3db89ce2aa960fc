"""Failures reach the caller as named exceptions, never as hangs: task exceptions (with the
remote traceback), serialization failures at every crossing, and failures of nested tasks."""

from __future__ import annotations

import functools
import logging
import pickle
import sys
import threading
import types

import pytest

from dtm_executor import RemoteTraceback, SerializationError, current_executor


# -- task functions (module level: workers import this module) ---------------------------
def explode(msg):
    raise ValueError(msg)


def explode_if_3(x):
    if x == 3:
        raise ValueError(f"item {x} exploded")
    return x


def raise_chained():
    try:
        raise KeyError("the-inner-cause")
    except KeyError as e:
        raise RuntimeError("the-outer-error") from e


def takes_anything(*args, **kwargs):
    return len(args) + len(kwargs)


def return_lock():
    return threading.Lock()


def _refuse():
    raise RuntimeError("refusing to be unpickled")


class Unloadable:
    """Pickles fine, cannot be unpickled."""

    def __reduce__(self):
        return (_refuse, ())


def return_unloadable():
    return Unloadable()


class TwoArgError(Exception):
    """Its pickle calls ``TwoArgError(a)``, which fails: it cannot be rebuilt as raised."""

    def __init__(self, a, b):
        super().__init__(a)
        self.b = b


def raise_two_arg():
    raise TwoArgError("two-arg-first", "two-arg-second")


class LockedError(Exception):
    def __init__(self, msg):
        super().__init__(msg)
        self.lock = threading.Lock()


def raise_locked():
    raise LockedError("locked-error-message")


def raise_base(kind):
    if kind == "exit":
        raise SystemExit(3)
    raise KeyboardInterrupt("interrupt-inside-a-task")


def child_fails(x):
    raise ValueError(f"child {x} failed")


def parent_waits_on_child(x):
    return current_executor().submit(child_fails, x).result()


def grandparent(x):
    return current_executor().submit(parent_waits_on_child, x).result()


def parent_catches(x):
    try:
        current_executor().submit(child_fails, x).result()
    except ValueError as e:
        return ("caught", type(e).__name__, str(e))
    return ("not raised",)


def parent_maps(n):
    return list(current_executor().map(explode_if_3, range(n)))


def parent_fans_out(n):
    fs = [current_executor().submit(explode_if_3, i) for i in range(n)]
    return [f.result() for f in fs]


def _warnings_about(caplog, text):
    return [
        r for r in caplog.records
        if r.name == "dtm_executor" and r.levelno >= logging.WARNING and text in r.getMessage()
    ]


def _records_about(caplog, text):
    return [r for r in caplog.records if r.name == "dtm_executor" and text in r.getMessage()]


# -- task exceptions ------------------------------------------------------------------------
def test_exception_carries_remote_traceback_and_is_logged_once_at_debug(ex2, caplog):
    caplog.set_level(logging.DEBUG, logger="dtm_executor")
    f = ex2.submit(explode, "boom-unique-1")
    with pytest.raises(ValueError, match="boom-unique-1") as info:
        f.result(timeout=30)
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "explode" in str(cause)  # the failing function
    assert "boom-unique-1" in str(cause)
    assert "test_errors.py" in str(cause)
    # asking again neither changes the exception nor logs again
    assert f.exception() is info.value
    with pytest.raises(ValueError):
        f.result()
    # it reached its future: like the standard library, nothing above DEBUG is logged
    recs = _records_about(caplog, "boom-unique-1")
    assert len(recs) == 1, [r.getMessage() for r in recs]
    assert recs[0].levelno == logging.DEBUG
    assert "explode" in recs[0].getMessage()


def test_exception_chain_is_in_the_remote_traceback(ex2):
    with pytest.raises(RuntimeError, match="the-outer-error") as info:
        ex2.submit(raise_chained).result(timeout=30)
    assert isinstance(info.value.__cause__, RemoteTraceback)
    assert "the-inner-cause" in str(info.value.__cause__)


def test_map_item_exception_has_traceback_and_is_logged_once_at_debug(ex2, caplog):
    caplog.set_level(logging.DEBUG, logger="dtm_executor")
    it = ex2.map(explode_if_3, range(6))
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(ValueError, match="item 3 exploded") as info:
        next(it)
    assert isinstance(info.value.__cause__, RemoteTraceback)
    assert "explode_if_3" in str(info.value.__cause__)
    recs = _records_about(caplog, "item 3 exploded")
    assert len(recs) == 1 and recs[0].levelno == logging.DEBUG


def test_base_exceptions_inside_tasks_do_not_kill_workers(ex2):
    with pytest.raises(SystemExit) as info:
        ex2.submit(raise_base, "exit").result(timeout=30)
    assert info.value.code == 3
    with pytest.raises(KeyboardInterrupt, match="interrupt-inside-a-task"):
        ex2.submit(raise_base, "interrupt").result(timeout=30)
    assert list(ex2.map(pow, range(8), [2] * 8)) == [i * i for i in range(8)]


# -- serialization failures ------------------------------------------------------------------
def test_unpicklable_positional_argument_fails_at_submit(ex2):
    with pytest.raises(SerializationError) as info:
        ex2.submit(takes_anything, 1, threading.Lock())
    assert isinstance(info.value, pickle.PicklingError)
    msg = str(info.value)
    assert "argument 1" in msg
    assert "takes_anything" in msg  # the task
    assert "lock" in msg.lower()  # the offending value
    assert ex2.submit(takes_anything, 1, 2).result(timeout=30) == 2


def test_unpicklable_keyword_argument_fails_at_submit(ex2):
    with pytest.raises(SerializationError) as info:
        ex2.submit(takes_anything, 1, the_lock=threading.Lock())
    msg = str(info.value)
    assert "the_lock" in msg
    assert "takes_anything" in msg


def test_unpicklable_map_item(ex2):
    with pytest.raises(SerializationError):
        list(ex2.map(takes_anything, [1, threading.Lock(), 3]))
    assert list(ex2.map(takes_anything, [1, 2, 3])) == [1, 1, 1]


def test_unpicklable_function(ex2):
    lock = threading.Lock()
    with pytest.raises(SerializationError, match="function"):
        ex2.submit(functools.partial(takes_anything, lock))
    with pytest.raises(SerializationError, match="function"):
        ex2.submit(lambda: lock)
    with pytest.raises(SerializationError):
        list(ex2.map(lambda x: (x, lock), range(3)))
    # lambdas and closures that can be pickled go by value
    k = 10
    assert ex2.submit(lambda x: x + k, 1).result(timeout=30) == 11
    assert list(ex2.map(lambda x: x * k, range(4))) == [0, 10, 20, 30]


def test_function_that_cannot_be_unpickled_on_the_worker(ex2):
    # pickled by reference to a module that exists in this process only
    name = "dtm_test_phantom_module"
    mod = types.ModuleType(name)
    exec("def phantom(x):\n    return x\n", mod.__dict__)
    sys.modules[name] = mod
    try:
        f = ex2.submit(mod.phantom, 1)
        with pytest.raises(SerializationError, match="unpickle") as info:
            f.result(timeout=30)
        assert name in str(info.value)
    finally:
        del sys.modules[name]
    assert ex2.submit(pow, 2, 10).result(timeout=30) == 1024


def test_unpicklable_result_fails_only_that_future(ex2):
    fs = [ex2.submit(pow, 2, i) for i in range(5)]
    bad = ex2.submit(return_lock)
    with pytest.raises(SerializationError) as info:
        bad.result(timeout=30)
    assert "return_lock" in str(info.value)
    assert "pickle" in str(info.value)
    assert [f.result(timeout=30) for f in fs] == [1, 2, 4, 8, 16]
    assert ex2.submit(pow, 3, 3).result(timeout=30) == 27


def test_result_that_cannot_be_unpickled_by_the_caller(ex2):
    bad = ex2.submit(return_unloadable)
    with pytest.raises(SerializationError) as info:
        bad.result(timeout=30)
    assert "return_unloadable" in str(info.value)
    assert "refusing to be unpickled" in str(info.value)
    assert ex2.submit(pow, 3, 2).result(timeout=30) == 9


@pytest.mark.parametrize("fn, name, text", [
    (raise_two_arg, "TwoArgError", "two-arg-first"),
    (raise_locked, "LockedError", "locked-error-message"),
])
def test_exception_that_cannot_travel(ex2, fn, name, text):
    with pytest.raises(Exception) as info:
        ex2.submit(fn).result(timeout=30)
    assert name in str(info.value)
    assert text in str(info.value)
    assert isinstance(info.value.__cause__, RemoteTraceback)
    assert fn.__name__ in str(info.value.__cause__)
    assert ex2.submit(pow, 2, 2).result(timeout=30) == 4


# -- nested tasks ------------------------------------------------------------------------------
def test_child_exception_reaches_parent_then_client(ex2):
    with pytest.raises(ValueError, match="child 7 failed") as info:
        ex2.submit(parent_waits_on_child, 7).result(timeout=60)
    text = str(info.value.__cause__)
    assert "child_fails" in text and "parent_waits_on_child" in text


def test_grandchild_exception_reaches_client(ex2):
    with pytest.raises(ValueError, match="child 5 failed") as info:
        ex2.submit(grandparent, 5).result(timeout=60)
    assert "child_fails" in str(info.value.__cause__)


def test_parent_can_catch_child_exception(ex2, caplog):
    caplog.set_level(logging.WARNING, logger="dtm_executor")
    assert ex2.submit(parent_catches, 3).result(timeout=60) == ("caught", "ValueError", "child 3 failed")
    assert not _warnings_about(caplog, "child 3 failed")  # handled inside the task: not the caller's


def test_many_failing_nested_trees(ex2):
    fs = [ex2.submit(parent_waits_on_child, i) for i in range(30)]
    for i, f in enumerate(fs):
        with pytest.raises(ValueError, match=f"child {i} failed"):
            f.result(timeout=60)
    fs = [ex2.submit(parent_catches, i) for i in range(30)]
    assert [f.result(timeout=60)[2] for f in fs] == [f"child {i} failed" for i in range(30)]


def test_nested_map_and_fan_out_exceptions(ex2):
    with pytest.raises(ValueError, match="item 3 exploded"):
        ex2.submit(parent_maps, 10).result(timeout=60)
    assert ex2.submit(parent_maps, 3).result(timeout=60) == [0, 1, 2]
    with pytest.raises(ValueError, match="item 3 exploded"):
        ex2.submit(parent_fans_out, 10).result(timeout=60)

"""Property: a random tree of nested tasks evaluated by the executor gives exactly what plain
serial evaluation of the same tree gives (the value, or the exception's type and arguments).

Trees are data (nested tuples) interpreted by module-level functions, so they pickle by
reference. Every internal node submits its children as tasks and waits on them in a random
style: ``result()`` in order, ``ex.map``, ``concurrent.futures.wait`` or ``as_completed``.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings, target
from hypothesis import strategies as st

from dtm_executor import DTMExecutor, current_executor

pytestmark = pytest.mark.timeout(300)

MAX_DEPTH = 4
MAX_FANOUT = 5
STYLES = ("result", "map", "wait", "as_completed")


class TreeError(Exception):
    """A task failure of our own type (module level, so it pickles by reference)."""


ERRORS: dict[str, type[Exception]] = {
    "TreeError": TreeError,
    "ValueError": ValueError,
    "KeyError": KeyError,
    "ZeroDivisionError": ZeroDivisionError,
}

# A tree is one of:
#   ("leaf", value)
#   ("fail", error_name, message)                      -- raises when evaluated
#   ("node", style, fail_before, fail_after, children) -- fail_*: None or (error_name, message)
Tree = tuple[Any, ...]

MOD = 1_000_000_007


def _combine(values: list[int]) -> int:
    """Order-sensitive, so results delivered in the wrong order are caught."""
    acc = 17
    for v in values:
        acc = (acc * 31 + v) % MOD
    return acc


def _raise(spec: tuple[str, str]) -> None:
    name, msg = spec
    raise ERRORS[name](msg)


# -- serial reference --------------------------------------------------------------------------
def serial(tree: Tree) -> int:
    kind = tree[0]
    if kind == "leaf":
        return tree[1]
    if kind == "fail":
        _raise(tree[1:])
    _, _style, before, after, children = tree
    if before is not None:
        _raise(before)
    values = [serial(c) for c in children]  # the first failing child (in order) wins
    if after is not None:
        _raise(after)
    return _combine(values)


# -- the same tree, every node a task -------------------------------------------------------------
def run(tree: Tree) -> int:
    kind = tree[0]
    if kind == "leaf":
        return tree[1]
    if kind == "fail":
        _raise(tree[1:])
    _, style, before, after, children = tree
    if before is not None:
        _raise(before)
    ex = current_executor()
    if style == "map":
        values = list(ex.map(run, children))  # raises at the first failing item, in order
    else:
        futs = [ex.submit(run, c) for c in children]
        if style == "result":
            values = [f.result() for f in futs]
        elif style == "wait":
            done, not_done = cf.wait(futs)
            assert not not_done and len(done) == len(set(futs))
            values = [f.result() for f in futs]
        elif style == "as_completed":
            # collect in completion order, but report as serial evaluation would: the first
            # failing child in order
            got: dict[int, tuple[bool, Any]] = {}
            index = {id(f): i for i, f in enumerate(futs)}
            for f in cf.as_completed(futs):
                try:
                    got[index[id(f)]] = (True, f.result())
                except Exception as e:  # noqa: BLE001 - re-raised below in serial order
                    got[index[id(f)]] = (False, e)
            assert len(got) == len(futs)
            values = []
            for i in range(len(futs)):
                ok, v = got[i]
                if not ok:
                    raise v
                values.append(v)
        else:
            raise AssertionError(style)
    if after is not None:
        _raise(after)
    return _combine(values)


def size(tree: Tree) -> int:
    return 1 + sum(size(c) for c in tree[4]) if tree[0] == "node" else 1


def depth(tree: Tree) -> int:
    return 1 + max(depth(c) for c in tree[4]) if tree[0] == "node" else 0


def outcome(fn, *args: Any) -> tuple[str, Any]:
    try:
        return ("value", fn(*args))
    except Exception as e:  # noqa: BLE001
        return ("error", type(e).__name__, e.args)


#: executors (by worker count) that lost a result: later examples fail at once with the tree
#: that hung, instead of each waiting out its own timeout while Hypothesis shrinks
_hung: dict[int, Tree] = {}


def future_outcome(fut: cf.Future, nworkers: int, what: Any) -> tuple[str, Any]:
    if nworkers in _hung:
        pytest.fail(f"the {nworkers}-worker executor hung earlier, on {_hung[nworkers]!r}")
    try:
        return ("value", fut.result(timeout=60))
    except cf.TimeoutError:
        _hung[nworkers] = what
        pytest.fail(f"no result after 60 s from the {nworkers}-worker executor for {what!r}")
    except Exception as e:  # noqa: BLE001
        return ("error", type(e).__name__, e.args)


# -- strategies ------------------------------------------------------------------------------------
errors = st.tuples(st.sampled_from(sorted(ERRORS)), st.text("abcxyz", min_size=1, max_size=6))


def _chance(draw: st.DrawFn, n: int) -> bool:
    """True about once in ``n`` draws (a mid-range value: generation favours the bounds)."""
    return draw(st.integers(0, n - 1)) == n // 2


@st.composite
def trees(draw: st.DrawFn, depth: int = MAX_DEPTH, root: bool = True) -> Tree:
    if depth == 0 or _chance(draw, 20 if root else 4):
        if _chance(draw, 150):
            name, msg = draw(errors)
            return ("fail", name, msg)
        return ("leaf", draw(st.integers(-(10**6), 10**6)))
    style = draw(st.sampled_from(STYLES))
    before = draw(errors) if _chance(draw, 120) else None
    after = draw(errors) if _chance(draw, 120) else None
    children = tuple(draw(st.lists(trees(depth - 1, False), min_size=1, max_size=MAX_FANOUT)))
    return ("node", style, before, after, children)


# -- executors -----------------------------------------------------------------------------------
def _close(ex: DTMExecutor, timeout: float = 60.0) -> bool:
    """Shut ``ex`` down; if that hangs (a scheduler bug), kill its workers so the run goes on."""
    t = threading.Thread(target=ex.shutdown, kwargs={"wait": True, "cancel_futures": True}, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        ex._pool.kill()
        return False
    return True


@pytest.fixture(scope="module")
def executors():
    made: dict[int, DTMExecutor] = {}
    try:
        for n in (1, 2, 4):
            made[n] = DTMExecutor(n)
        yield made
    finally:
        hung = [n for n, ex in made.items() if not _close(ex)]
        assert not hung, f"shutdown hung for the executors with {hung} workers (killed)"


SETTINGS = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.mark.parametrize("nworkers", [1, 2, 4])
@SETTINGS
@given(tree=trees())
def test_random_tree_matches_serial(executors, nworkers, tree):
    ex = executors[nworkers]
    target(float(size(tree)), label="tasks")  # steer towards big trees
    event(f"depth {depth(tree)}")
    expected = outcome(serial, tree)
    event(expected[0])
    assert future_outcome(ex.submit(run, tree), nworkers, tree) == expected


@pytest.mark.parametrize("nworkers", [2, 4])
@settings(SETTINGS, max_examples=8)
@given(forest=st.lists(trees(3), min_size=1, max_size=8))
def test_random_forest_at_once_matches_serial(executors, nworkers, forest):
    """Several trees in flight at once (they compete for workers and steal from each other)."""
    ex = executors[nworkers]
    expected = [outcome(serial, t) for t in forest]
    futs = [ex.submit(run, t) for t in forest]
    assert [future_outcome(f, nworkers, forest) for f in futs] == expected


def test_serial_reference_sanity():
    tree = ("node", "map", None, None, (("leaf", 1), ("leaf", 2)))
    assert serial(tree) == _combine([1, 2])
    bad = ("node", "result", None, None, (("leaf", 1), ("fail", "KeyError", "k"), ("fail", "ValueError", "v")))
    assert outcome(serial, bad) == ("error", "KeyError", ("k",))

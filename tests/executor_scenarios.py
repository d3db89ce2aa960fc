"""The behaviour every transport must show, as plain functions (not a pytest module).

Each ``scenario_*(ctx)`` takes a `Context` (how to make an executor of the transport under test,
how to lose one of its workers, a scratch directory shared by all ranks) and raises on failure.
tests/test_behaviour.py runs them on every transport, in the style of CPython's
``create_executor_tests``; tests/behaviour_mpi.py runs the same functions under ``mpiexec``;
tests/test_third_party_transport.py runs them on a transport from outside the package.

Tasks never assume how many tasks a worker prefetches or which worker runs what: they block on
*gates* (files in the scratch directory, which every rank and process sees) and say where they
ran through *marks* (files again).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import os
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator

from dtm_executor import DTMExecutor, RemoteTraceback, WorkerLostError, current_executor

#: Seconds any wait of a scenario may take before it counts as a hang.
PATIENCE = 60.0


class Context:
    """How a scenario uses the transport under test."""

    def __init__(
        self,
        transport: str,
        tmp: Path,
        lose: Callable[[DTMExecutor, int], None] | None = None,
        fixed_workers: bool = False,
    ) -> None:
        self.transport = transport
        self.tmp = Path(tmp)
        #: ``lose(ex, rank)``: make worker ``rank`` of ``ex`` die (None: the transport cannot)
        self.lose = lose
        #: the transport decides the number of workers (MPI: the ranks), not ``max_workers``
        self.fixed_workers = fixed_workers
        self._n = 0

    def make(self, max_workers: int = 2, **kwargs: Any) -> DTMExecutor:
        return DTMExecutor(max_workers, transport=self.transport, **kwargs)

    def dir(self, name: str) -> Path:
        """A fresh directory for one scenario's gates and marks."""
        self._n += 1
        d = self.tmp / f"{self._n}-{name}"
        d.mkdir(parents=True)
        return d


# -- helpers that run as tasks (module level: they travel by reference) -----------------------------
def wait_for(path: Path | str, timeout: float = PATIENCE) -> None:
    end = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > end:
            raise TimeoutError(f"{path} did not appear within {timeout} s")
        time.sleep(0.01)


def wait_until(pred: Callable[[], Any], timeout: float = PATIENCE) -> Any:
    end = time.monotonic() + timeout
    while True:
        got = pred()
        if got or time.monotonic() > end:
            return got
        time.sleep(0.01)


def square(x: int) -> int:
    return x * x


def add(x: int, y: int = 0, *, z: int = 0) -> int:
    return x + y + z


def fib(n: int) -> int:
    if n < 2:
        return n
    ex = current_executor()
    a, b = ex.submit(fib, n - 1), ex.submit(fib, n - 2)
    return a.result() + b.result()


def fib_constructed(n: int) -> int:
    if n < 2:
        return n
    with DTMExecutor() as ex:  # inside a task: the worker's handle (shutdown does nothing)
        return sum(ex.map(fib_constructed, [n - 1, n - 2]))


def describe_handle(_: object = None) -> tuple[bool, bool, int]:
    h = current_executor()
    return h is DTMExecutor(), isinstance(h, DTMExecutor), h.max_workers


def explode(msg: str) -> None:
    raise ValueError(msg)


def catch_child(msg: str) -> str:
    try:
        current_executor().submit(explode, msg).result()
    except ValueError as e:
        return f"caught {e}"
    return "not raised"


def explode_at_3(x: int) -> int:
    if x == 3:
        raise KeyError(x)
    return x


def gated(gate: str, mark_dir: str, i: int) -> int:
    """Mark that task ``i`` started (with the rank running it), then wait for the gate."""
    rank = current_executor().getWorkerId()
    Path(mark_dir, f"{i}-{rank}-{os.getpid()}-{threading.get_ident()}").touch()
    wait_for(gate)
    return i


def marked(mark_dir: str, i: int) -> int:
    Path(mark_dir, f"{i}").touch()
    return i


def started(mark_dir: str) -> list[tuple[int, int]]:
    """(task, rank) of every start marked in ``mark_dir`` (a task run again marks again)."""
    out = []
    for name in os.listdir(mark_dir):
        i, rank = name.split("-")[:2]
        out.append((int(i), int(rank)))
    return out


@contextlib.contextmanager
def _opened_at_exit(gate: Path) -> Iterator[None]:
    """Whatever happens, the gate opens before the executor shuts down (which waits for tasks)."""
    try:
        yield
    finally:
        gate.touch()


# -- the scenarios ------------------------------------------------------------------------------
def scenario_submit(ctx: Context) -> None:
    with ctx.make(2) as ex:
        assert ex.submit(pow, 2, 10).result(timeout=PATIENCE) == 1024
        assert ex.submit(add, 1, 2, z=3).result(timeout=PATIENCE) == 6
        fs = [ex.submit(square, i) for i in range(200)]
        assert sorted(f.result() for f in cf.as_completed(fs, timeout=PATIENCE)) == [i * i for i in range(200)]
        done, not_done = cf.wait(fs, timeout=PATIENCE)
        assert len(done) == 200 and not not_done
        assert ex.submit(lambda x: x + 1, 41).result(timeout=PATIENCE) == 42  # by value


def scenario_map(ctx: Context) -> None:
    with ctx.make(2) as ex:
        assert list(ex.map(square, range(300))) == [i * i for i in range(300)]
        assert list(ex.map(square, range(100), chunksize=7)) == [i * i for i in range(100)]
        assert list(ex.map(add, range(10), range(5))) == [2 * i for i in range(5)]  # the shortest wins
        assert list(ex.map(square, [])) == []
        assert list(ex.starmap(add, [(1, 2), (3, 4)])) == [3, 7]
        it = ex.map(explode_at_3, range(10))
        assert [next(it) for _ in range(3)] == [0, 1, 2]
        try:
            next(it)
        except KeyError:
            pass
        else:
            raise AssertionError("the item's exception was not raised at that item")


def scenario_nested(ctx: Context) -> None:
    with ctx.make(2) as ex:
        assert ex.submit(fib, 14).result(timeout=PATIENCE) == 377
        assert ex.submit(fib_constructed, 10).result(timeout=PATIENCE) == 55
        same, is_executor, nworkers = ex.submit(describe_handle).result(timeout=PATIENCE)
        assert same and is_executor and nworkers == ex.max_workers
        assert list(ex.map(fib, range(12))) == [0, 1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89]


def scenario_exceptions(ctx: Context) -> None:
    with ctx.make(2) as ex:
        f = ex.submit(explode, "boom")
        try:
            f.result(timeout=PATIENCE)
        except ValueError as e:
            assert str(e) == "boom"
            # the worker's traceback: as the cause when the task ran in another process (under
            # MPI rank 0 runs tasks too: then the exception has it itself)
            where = str(e.__cause__) if e.__cause__ is not None else "".join(traceback.format_tb(e.__traceback__))
            assert e.__cause__ is None or isinstance(e.__cause__, RemoteTraceback)
            assert "explode" in where
        else:
            raise AssertionError("not raised")
        assert isinstance(f.exception(), ValueError)
        assert ex.submit(catch_child, "child").result(timeout=PATIENCE) == "caught child"
        assert ex.submit(square, 5).result(timeout=PATIENCE) == 25  # still serving


def scenario_cancel(ctx: Context) -> None:
    d = ctx.dir("cancel")
    gate, marks, ran = d / "gate", d / "marks", d / "ran"
    marks.mkdir()
    ran.mkdir()
    with ctx.make(2) as ex, _opened_at_exit(gate):
        n = ex.max_workers
        blockers = [ex.submit(gated, str(gate), str(marks), i) for i in range(n)]
        assert wait_until(lambda: len(started(str(marks))) >= n), "the workers did not start"
        queued = [ex.submit(marked, str(ran), i) for i in range(50)]
        cancelled = [f for f in queued if f.cancel()]
        assert len(cancelled) >= 50 - 10 * n, "queued tasks could not be cancelled"
        assert all(f.cancelled() and f.done() for f in cancelled)
        gate.touch()
        assert [f.result(timeout=PATIENCE) for f in blockers] == list(range(n))
        rest = [f for f in queued if f not in cancelled]
        assert all(f.result(timeout=PATIENCE) is not None for f in rest)
        done, _ = cf.wait(queued, timeout=PATIENCE)  # the cancelled ones too, once dropped
        assert len(done) == 50
    never = {queued.index(f) for f in cancelled}
    assert not never & {int(x) for x in os.listdir(ran)}, "a cancelled task ran"


def scenario_shutdown(ctx: Context) -> None:
    d = ctx.dir("shutdown")
    gate, marks, ran = d / "gate", d / "marks", d / "ran"
    marks.mkdir()
    ran.mkdir()
    ex = ctx.make(2)
    fs = [ex.submit(square, i) for i in range(20)]
    ex.shutdown(wait=True)  # waits for the work submitted before
    assert [f.result(timeout=0) for f in fs] == [i * i for i in range(20)]
    for call in (lambda: ex.submit(square, 1), lambda: ex.map(square, [1])):
        try:
            call()
        except RuntimeError as e:
            assert "after shutdown" in str(e)
        else:
            raise AssertionError("new work accepted after shutdown")
    ex.shutdown()  # again: nothing happens

    ex = ctx.make(2)
    timer = threading.Timer(0.5, gate.touch)
    with _opened_at_exit(gate):
        n = ex.max_workers
        blockers = [ex.submit(gated, str(gate), str(marks), i) for i in range(n)]
        assert wait_until(lambda: len(started(str(marks))) >= n), "the workers did not start"
        queued = [ex.submit(marked, str(ran), i) for i in range(30)]
        timer.start()
        t0 = time.monotonic()
        ex.shutdown(wait=True, cancel_futures=True)
    assert time.monotonic() - t0 >= 0.3  # it waited for the running tasks
    timer.join()
    assert [f.result(timeout=0) for f in blockers] == list(range(n))
    cancelled = [f for f in queued if f.cancelled()]
    assert len(cancelled) >= 30 - 10 * n and all(f.done() for f in queued)
    never = {queued.index(f) for f in cancelled}
    assert not never & {int(x) for x in os.listdir(ran)}, "a cancelled task ran"


def scenario_worker_loss(ctx: Context) -> None:
    if ctx.lose is None:
        return  # this transport cannot lose a worker and go on (an MPI job ends with its rank)
    d = ctx.dir("loss")
    gate, marks = d / "gate", d / "marks"
    marks.mkdir()
    with ctx.make(2) as ex, _opened_at_exit(gate):  # max_retries=3: the task runs again elsewhere
        f = ex.submit(gated, str(gate), str(marks), 0)
        assert wait_until(lambda: started(str(marks))), "the task did not start"
        (_, first), = started(str(marks))
        ctx.lose(ex, first)
        assert wait_until(lambda: len(started(str(marks))) == 2), "the task did not run again"
        gate.touch()
        assert f.result(timeout=PATIENCE) == 0
        assert ex.submit(square, 7).result(timeout=PATIENCE) == 49  # the run goes on
        assert list(ex.map(square, range(50))) == [i * i for i in range(50)]
    d = ctx.dir("loss-no-retry")
    gate, marks = d / "gate", d / "marks"
    marks.mkdir()
    with ctx.make(2, max_retries=0) as ex, _opened_at_exit(gate):
        f = ex.submit(gated, str(gate), str(marks), 0)
        assert wait_until(lambda: started(str(marks))), "the task did not start"
        (_, first), = started(str(marks))
        ctx.lose(ex, first)
        try:
            f.result(timeout=PATIENCE)
        except WorkerLostError as e:
            assert "max_retries=0" in str(e)
        else:
            raise AssertionError("a task lost with its worker did not fail")
        gate.touch()
        assert ex.submit(square, 3).result(timeout=PATIENCE) == 9


SCENARIOS: dict[str, Callable[[Context], None]] = {
    name[len("scenario_"):]: fn for name, fn in sorted(globals().items()) if name.startswith("scenario_")
}


def run_all(ctx: Context, names: Iterator[str] | None = None) -> Iterator[str]:
    """Run the scenarios one after the other; yield the name of each that passed."""
    for name in names or SCENARIOS:
        SCENARIOS[name](ctx)
        yield name

"""The bookkeeping behind ``waitAll``/``waitAny``/``testAll``/``testAny`` without ``reqList``:
whose requests they consider (the current task's: outside tasks, the root task of the executor),
and which one is "the last finished"."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
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


# -- 2. "the last finished" is the last to finish, for every kind of request -------------------
#: Run as a script: locally (``python script.py``) and under ``mpiexec -n 3``. Its checks run in
#: the root task and in tasks at depth 1 and 2; it prints ``ALL OK`` or the failed checks.
LAST_FINISHED_SCRIPT = '''
import sys

from dtm_executor import current_executor, dtm

KINDS = ("apply_async", "map_async")


def sq(x):
    return x * x


def make(kind):
    if kind == "apply_async":
        return dtm.apply_async(sq, 3)
    return dtm.map_async(sq, range(40))


def checks(where):
    bad = []

    def expect(what, got, want):
        if got is not want:
            bad.append(f"{where}: {what}: got {got!r}, want {want!r}")

    expect("nothing launched: waitAny()", dtm.waitAny(), None)
    expect("nothing launched: testAny()", dtm.testAny(), None)
    ex = current_executor()
    for ka in KINDS:
        for kb in KINDS:
            tag = f"{ka} then {kb}"
            a = make(ka)
            a.wait()
            f = ex.submit(sq, 2)  # a plain future, finished before b
            f.result()
            list(dtm.imap(sq, range(30)))  # and the results of an imap
            b = make(kb)
            b.wait()
            expect(tag + ": waitAny()", dtm.waitAny(), b)
            expect(tag + ": testAny()", dtm.testAny(), b)
            expect(tag + ": testAny() again", dtm.testAny(), b)
            expect(tag + ": waitAny([f, a, b])", dtm.waitAny([f, a, b]), b)
            expect(tag + ": testAny([b, a, f])", dtm.testAny([b, a, f]), b)
            g = ex.submit(sq, 5)  # a plain future finishing last
            g.result()
            expect(tag + ": testAny([b, g, a])", dtm.testAny([b, g, a]), g)
            c = make(ka)
            c.cancel()  # too late to cancel (or not): either way it is the last one settled
            c.wait()
            expect(tag + ": after c: waitAny()", dtm.waitAny(), c)
            expect(tag + ": after c: testAny([c, b])", dtm.testAny([c, b]), c)
    return bad


def at_depth(depth):
    if depth > 1:
        return dtm.apply(at_depth, depth - 1)
    return checks("in a task")


def main():
    bad = checks("root")
    for depth in (1, 2):
        bad += [f"depth {depth}: {b}" for b in dtm.apply(at_depth, depth)]
    return bad


if __name__ == "__main__":
    dtm.setOptions(max_workers=2)
    bad = dtm.start(main)
    print("\\n".join(bad) if bad else "ALL OK")
    sys.exit(1 if bad else 0)
'''

_venv_mpiexec = Path(sys.executable).parent / "mpiexec"
MPIEXEC = str(_venv_mpiexec) if _venv_mpiexec.exists() else shutil.which("mpiexec")
#: Launcher variables that would make a child believe it is an MPI rank.
_MPI_VARS = ("PMI_", "PMIX_", "OMPI_", "MPI_LOCAL", "MV2_", "HYDRA_", "SLURM_")


def _run(cmd: list[str], cwd: Path, timeout: float = 150.0) -> subprocess.CompletedProcess:
    """Run ``cmd`` in a session of its own; on timeout (or if anything of the session is left
    running afterwards) kill the whole session and fail."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_MPI_VARS)}
    env.pop("DTM_EXECUTOR_TRANSPORT", None)
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{cmd} did not finish within {timeout} s\n{out}\n{err}", pytrace=False)
    end = time.monotonic() + 10
    while time.monotonic() < end:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"processes of {cmd} outlived it", pytrace=False)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.mark.parametrize("launch", ["local", "mpiexec -n 3"])
def test_the_last_finished_is_the_last_to_finish(tmp_path, launch):
    script = tmp_path / "last_finished.py"
    script.write_text(LAST_FINISHED_SCRIPT)
    if launch == "local":
        cmd = [sys.executable, str(script)]
    else:
        pytest.importorskip("mpi4py", reason="the MPI transport needs mpi4py")
        if MPIEXEC is None:
            pytest.skip("no mpiexec next to this Python or on PATH (pip install mpich)")
        cmd = [MPIEXEC, "-n", "3", sys.executable, "-m", "dtm_executor", str(script)]
    res = _run(cmd, tmp_path)
    assert res.stdout.strip() == "ALL OK" and res.returncode == 0, res.stdout + res.stderr

"""A task's result is valid on every rank or on none (issue 8, item 9).

A result (or exception) that could not travel back from another rank fails the same way when the
task ran where its future lives: a top-level task run by rank 0 under MPI, or a nested child run
inline by the task that submitted it. The MPI cases run under a real ``mpiexec``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from dtm_executor import DTMExecutor, SerializationError, current_executor

pytestmark = pytest.mark.timeout(200)


def _close(ex: DTMExecutor, timeout: float = 60.0) -> None:
    t = threading.Thread(target=ex.shutdown, kwargs={"wait": True, "cancel_futures": True}, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        ex._pool.kill()
        pytest.fail(f"shutdown hung for {timeout} s; the workers were killed")


@pytest.fixture(scope="module")
def ex() -> Iterator[DTMExecutor]:
    ex = DTMExecutor(2)
    yield ex
    _close(ex)


def gen(n: int) -> Iterator[int]:
    return (i for i in range(n))


def make_lambda(k: int) -> Any:
    return lambda x: x + k


class Unpicklable(Exception):
    """Cannot be rebuilt from its pickle (two required arguments, one given by args)."""

    def __init__(self, a: int, b: int) -> None:
        super().__init__(a)
        self.b = b


def raise_unpicklable(_: int) -> None:
    raise Unpicklable(1, 2)


def child_outcome(fn: Any, arg: Any) -> str:
    """Submit one child and wait for it (it usually runs inline, in this very thread)."""
    fut = current_executor().submit(fn, arg)
    try:
        value = fut.result()
    except SerializationError as e:
        return "SerializationError" if "could not be pickled" in str(e) else f"other: {e}"
    except Exception as e:  # noqa: BLE001
        return type(e).__name__
    return f"ok {type(value).__name__}"


def test_inline_child_returning_a_generator_fails_as_if_it_had_moved(ex):
    outcomes = [f.result(timeout=60) for f in [ex.submit(child_outcome, gen, 3) for _ in range(10)]]
    assert outcomes == ["SerializationError"] * 10


def test_inline_child_returning_a_lambda_still_works(ex):
    outcomes = [f.result(timeout=60) for f in [ex.submit(child_outcome, make_lambda, 3) for _ in range(10)]]
    assert outcomes == ["ok function"] * 10


def test_inline_child_raising_an_unpicklable_exception_is_replaced_as_if_it_had_moved(ex):
    # a moved task's unpicklable exception arrives as RuntimeError (see pack_exception); same inline
    outcomes = [f.result(timeout=60) for f in [ex.submit(child_outcome, raise_unpicklable, 0) for _ in range(6)]]
    assert outcomes == ["RuntimeError"] * 6
    with pytest.raises(RuntimeError, match="Unpicklable"):
        ex.submit(raise_unpicklable, 0).result(timeout=30)


# -- under MPI ------------------------------------------------------------------------------------
PY = sys.executable
_venv_mpiexec = Path(PY).parent / "mpiexec"
MPIEXEC = str(_venv_mpiexec) if _venv_mpiexec.exists() else shutil.which("mpiexec")
_MPI_VARS = ("PMI_", "PMIX_", "OMPI_", "MPI_LOCAL", "MV2_", "HYDRA_", "SLURM_")

MPI_PROGRAM = textwrap.dedent('''\
    import os
    from dtm_executor import DTMExecutor, SerializationError, current_executor

    def gen(i):
        return (x for x in range(i))

    def lam(i):
        return lambda x: x + i

    def rank(_):
        return os.environ.get("PMI_RANK")

    def nested_gen(i):
        try:
            current_executor().submit(gen, i).result()
        except SerializationError:
            return "failed"
        return "ok"

    def outcome(fut):
        try:
            v = fut.result()
        except SerializationError as e:
            return "SerializationError" if "could not be pickled" in str(e) else repr(e)
        return "ok"

    if __name__ == "__main__":
        with DTMExecutor() as ex:
            ranks = sorted(set(ex.map(rank, range(200), chunksize=1)))
            print("ranks", ranks)
            outs = [outcome(f) for f in [ex.submit(gen, i) for i in range(40)]]
            print("generators", sorted(set(outs)), len(outs))
            outs = [outcome(f) for f in [ex.submit(lam, i) for i in range(40)]]
            print("lambdas", sorted(set(outs)), len(outs))
            print("nested", sorted(set(ex.map(nested_gen, range(40), chunksize=1))))
    ''')


def _session_members(sid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as f:
                data = f.read().decode(errors="replace")
        except OSError:
            continue
        rest = data[data.rindex(")") + 2 :].split()
        if int(rest[3]) == sid and rest[0] not in ("Z", "X"):
            out.append(int(d))
    return out


@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec (pip install mpich)")
@pytest.mark.parametrize("style", ["launcher", "plain"])
def test_mpi_generator_results_fail_on_every_rank(tmp_path: Path, style: str) -> None:
    pytest.importorskip("mpi4py")
    script = tmp_path / "results.py"
    script.write_text(MPI_PROGRAM)
    assert MPIEXEC is not None
    head = [PY, "-m", "dtm_executor"] if style == "launcher" else [PY]
    cmd = [MPIEXEC, "-n", "2", *head, str(script)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(_MPI_VARS)}
    env.pop("DTM_EXECUTOR_TRANSPORT", None)
    env["PYTHONUNBUFFERED"] = "1"
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env=env, cwd=str(tmp_path))
    try:
        out, err = proc.communicate(timeout=150)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"mpiexec did not end within 150 s\nstdout:\n{out}\nstderr:\n{err[-5000:]}", pytrace=False)
    finally:
        end = time.monotonic() + 10
        while _session_members(proc.pid) and time.monotonic() < end:
            time.sleep(0.05)
        left = _session_members(proc.pid)
        if left:
            os.killpg(proc.pid, signal.SIGKILL)
    assert not left, f"processes left running: {left}"
    assert proc.returncode == 0, err[-5000:]
    lines = out.splitlines()
    assert lines[0] == "ranks ['0', '1']", out  # rank 0 runs tasks too: the case that differed
    assert lines[1:] == [
        "generators ['SerializationError'] 40",
        "lambdas ['ok'] 40",
        "nested ['failed']",
    ], out + err[-3000:]

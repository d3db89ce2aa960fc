"""The MPI transport and the ``python -m dtm_executor`` launcher, with real MPI processes.

Every MPI job runs in a session of its own, bounded by a timeout; on timeout the whole session
is killed, and after every job no process of its session may be left. The core scenarios
(tests/mpi_scenarios.py) run through each launch style with 2, 3 and 5 ranks (5 oversubscribes
this machine's 2 cores on purpose).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytest.importorskip("mpi4py", reason="the MPI transport needs mpi4py (pip install 'dtm_executor[mpi]')")

HERE = Path(__file__).resolve().parent
SCENARIOS = HERE / "mpi_scenarios.py"
PY = sys.executable
_venv_mpiexec = Path(PY).parent / "mpiexec"
MPIEXEC = str(_venv_mpiexec) if _venv_mpiexec.exists() else shutil.which("mpiexec")

needs_mpiexec = pytest.mark.skipif(
    MPIEXEC is None, reason="no mpiexec next to this Python or on PATH (pip install mpich)"
)

#: Launcher variables that would make a child believe it is an MPI rank.
_MPI_VARS = ("PMI_", "PMIX_", "OMPI_", "MPI_LOCAL", "MV2_", "HYDRA_", "SLURM_")


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_MPI_VARS)}
    env.pop("DTM_EXECUTOR_TRANSPORT", None)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


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


class Job:
    """A command in its own session: ``wait`` bounds it, and nothing of it may outlive it."""

    def __init__(self, cmd: list[str], env: dict[str, str] | None = None) -> None:
        self.cmd = cmd
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True, env=env if env is not None else _clean_env(), cwd=str(HERE.parent),
        )
        self.out = ""
        self.err = ""
        self.elapsed = 0.0
        self._unread = bytearray()  # read from the pipe by readline, not returned yet

    def readline(self, timeout: float) -> str:
        """The next stdout line, read from the pipe itself (``select`` on the buffered file
        object would miss a second line already in its buffer)."""
        import select

        fd = self.proc.stdout.fileno()  # type: ignore[union-attr]
        end = time.monotonic() + timeout
        while b"\n" not in self._unread:
            left = end - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                self.kill()
                pytest.fail(f"no output within {timeout} s from {' '.join(self.cmd)}", pytrace=False)
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            self._unread += chunk
        i = self._unread.find(b"\n")
        n = len(self._unread) if i < 0 else i + 1
        line = bytes(self._unread[:n]).decode(errors="replace")
        del self._unread[:n]
        self.out += line
        return line

    def wait(self, timeout: float) -> int:
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            out, err = self.proc.communicate()
            self.out += self._unread.decode(errors="replace") + out
            self.err += err
            pytest.fail(f"{' '.join(self.cmd)} did not end within {timeout} s\nstdout:\n{self.out[-3000:]}"
                        f"\nstderr:\n{self.err[-5000:]}", pytrace=False)
        self.out += self._unread.decode(errors="replace") + out
        self._unread.clear()
        self.err += err
        self.elapsed = time.monotonic() - self.t0
        self.assert_no_leftovers()
        return self.proc.returncode

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except OSError:
            pass

    def assert_no_leftovers(self, grace: float = 10.0) -> None:
        end = time.monotonic() + grace
        while _session_members(self.proc.pid):
            if time.monotonic() > end:
                left = _session_members(self.proc.pid)
                self.kill()
                pytest.fail(f"processes left running after {' '.join(self.cmd)}: {left}", pytrace=False)
            time.sleep(0.05)

    def report(self) -> str:
        return f"status {self.proc.returncode}\nstdout:\n{self.out[-3000:]}\nstderr:\n{self.err[-6000:]}"


def mpiexec(n: int, *args: str) -> list[str]:
    assert MPIEXEC is not None
    return [MPIEXEC, "-n", str(n), *args]


STYLES = {
    "mpiexec+launcher": lambda n, script, *a: mpiexec(n, PY, "-m", "dtm_executor", str(script), *a),
    "mpiexec+plain": lambda n, script, *a: mpiexec(n, PY, str(script), *a),
    "launcher-local": lambda n, script, *a: [PY, "-m", "dtm_executor", "-n", str(n), str(script), *a],
}

SCENARIO_NAMES = ("initializer", "nested random trees", "fib", "fan-out", "exceptions", "lambdas",
                  "large buffers", "DEAP OneMax", "second executor")


# -- the core scenarios through every launch style ------------------------------------------------
@needs_mpiexec
@pytest.mark.timeout(150)
@pytest.mark.parametrize("n", [2, 3, 5])
@pytest.mark.parametrize("style", list(STYLES))
def test_core_scenarios(style: str, n: int) -> None:
    pytest.importorskip("deap")
    pytest.importorskip("numpy")
    job = Job(STYLES[style](n, SCENARIOS))
    code = job.wait(120)
    assert code == 0, job.report()
    for name in SCENARIO_NAMES:
        assert f"OK {name}" in job.out, job.report()
    assert f"ALL OK {n} workers" in job.out, job.report()
    if style != "launcher-local":  # every rank took part (they are all workers)
        line = next(ln for ln in job.out.splitlines() if ln.startswith("OK fan-out"))
        assert f"'{n - 1}'" in line and "'0'" in line, line


# -- ends of a run ---------------------------------------------------------------------------------
ROOT_FAILS = '''
import sys, time
from dtm_executor import DTMExecutor

def spin(seconds):
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    return seconds

def gil_hog(n, marker):
    import os
    rank = os.environ.get("PMI_RANK")
    if rank == "0":
        time.sleep(0.5)  # rank 0 must stay responsive: it is the one that fails
        return 0
    open(f"{marker}.{rank}", "w").close()
    return sum(range(n))  # one C call: never lets other threads of its process run

class RootFailure(Exception):
    pass

if __name__ == "__main__":
    mode = sys.argv[1]
    ex = DTMExecutor()
    n = ex.max_workers
    if mode == "busy":  # every rank busy in long tasks when the root task fails
        futs = [ex.submit(spin, 30) for _ in range(3 * n)]
        time.sleep(1.0)
        print("tasks running", flush=True)
        raise RootFailure("the root task failed")
    if mode == "hog":  # a rank cannot even answer: the job must still end (MPI_Abort)
        import glob, os
        marker = os.path.abspath(sys.argv[2])
        futs = [ex.submit(gil_hog, 10**11, marker) for _ in range(3 * n)]
        end = time.monotonic() + 30
        while len(glob.glob(marker + ".*")) < n - 1 and time.monotonic() < end:
            time.sleep(0.05)  # until every other rank is stuck in a hog
        raise RootFailure("the root task failed")
    if mode == "in-with":  # a task's exception re-raised in the root, uncaught
        with ex:
            ex.submit(spin, 0.01).result()
            ex.submit(int, "not a number").result()
    if mode == "exit":
        ex.shutdown()
        sys.exit(3)
'''


@pytest.fixture
def root_fails(tmp_path: Path) -> Path:
    p = tmp_path / "root_fails.py"
    p.write_text(textwrap.dedent(ROOT_FAILS))
    return p


@needs_mpiexec
@pytest.mark.timeout(100)
@pytest.mark.parametrize("style", ["mpiexec+launcher", "mpiexec+plain"])
def test_root_exception_ends_every_rank(style: str, root_fails: Path) -> None:
    job = Job(STYLES[style](3, root_fails, "busy"))
    code = job.wait(60)
    assert code != 0, job.report()
    # the traceback is printed once, by rank 0 (the other ranks were busy in 30 s tasks)
    assert job.err.count("RootFailure: the root task failed") == 1, job.report()
    assert job.err.count("Traceback (most recent call last)") == 1, job.report()
    assert job.elapsed < 25, f"took {job.elapsed:.1f} s\n" + job.report()


@needs_mpiexec
@pytest.mark.timeout(100)
def test_root_exception_with_an_unresponsive_rank_aborts(root_fails: Path) -> None:
    env = _clean_env(DTM_EXECUTOR_MPI_EXIT_TIMEOUT="2")
    job = Job(STYLES["mpiexec+launcher"](3, root_fails, "hog", str(root_fails.parent / "hog")), env=env)
    code = job.wait(60)
    assert code != 0, job.report()
    assert job.err.count("RootFailure: the root task failed") == 1, job.report()
    assert "aborting the job" in job.err, job.report()
    assert job.elapsed < 30, f"took {job.elapsed:.1f} s\n" + job.report()


@needs_mpiexec
@pytest.mark.timeout(100)
@pytest.mark.parametrize("style", ["mpiexec+launcher", "mpiexec+plain"])
def test_task_exception_reraised_in_root_then_clean_failure(style: str, root_fails: Path) -> None:
    job = Job(STYLES[style](2, root_fails, "in-with"))
    code = job.wait(60)
    assert code != 0, job.report()
    assert "ValueError: invalid literal for int()" in job.err, job.report()


@needs_mpiexec
@pytest.mark.timeout(60)
def test_launcher_propagates_the_exit_status(root_fails: Path) -> None:
    job = Job(STYLES["mpiexec+launcher"](3, root_fails, "exit"))
    assert job.wait(45) == 3, job.report()


@needs_mpiexec
@pytest.mark.timeout(100)
@pytest.mark.parametrize("style", ["mpiexec+launcher", "mpiexec+plain"])
def test_ctrl_c_on_mpiexec_stops_every_rank(style: str, root_fails: Path) -> None:
    job = Job(STYLES[style](3, root_fails, "busy"))
    assert job.readline(60).strip() == "tasks running"
    job.proc.send_signal(signal.SIGINT)  # what a terminal's Ctrl-C does to mpiexec
    code = job.wait(40)
    assert code != 0, job.report()


@needs_mpiexec
@pytest.mark.timeout(60)
def test_worker_rank_import_failure_ends_the_job(tmp_path: Path) -> None:
    p = tmp_path / "bad_import.py"
    p.write_text(textwrap.dedent('''
        import os
        from dtm_executor import DTMExecutor
        if __name__ != "__main__" and os.environ.get("PMI_RANK") == "1":
            raise ImportError("only rank 1 lacks this module")
        if __name__ == "__main__":
            with DTMExecutor() as ex:
                print(ex.submit(abs, -1).result())
    '''))
    job = Job(STYLES["mpiexec+launcher"](3, p))
    code = job.wait(45)
    assert code != 0, job.report()
    assert "MPI rank 1 could not import" in job.err and "only rank 1 lacks" in job.err, job.report()


# -- transport details -----------------------------------------------------------------------------
TRANSPORT = '''
import sys, threading
import numpy as np
from dtm_executor._transports import mpi as _mpi

eng = _mpi._engine()
rank, size = eng.rank, eng.size
SIZES = [0, 1, 100, 64 << 10, (64 << 10) + 1, 3 << 20]

def frames(src, i):
    return [bytes([src, i % 256]) + b"h" * (i % 7)] + [
        np.full(s, (src * 31 + i + j) % 251, dtype=np.uint8) for j, s in enumerate(SIZES[: 1 + i % len(SIZES)])]

if rank != 0:
    eng.start_thread()
N = 60
# every rank sends N frame lists to every other rank, from two threads (send() is thread-safe;
# order is only promised per sending thread, so each thread numbers its own messages)
def sender(tid):
    for i in range(tid, N, 2):
        for d in range(size):
            if d != rank:
                eng.send(d, frames(rank, i), 1)
ts = [threading.Thread(target=sender, args=(t,)) for t in (0, 1)]
for t in ts: t.start()
last = {}
got = 0
while got < N * (size - 1):
    item = eng.recv(1, 30.0)
    assert item is not None, f"rank {rank}: only {got} messages"
    src, fr = item
    i = fr[0][1]
    want = frames(src, i)
    assert [bytes(f) for f in fr] == [bytes(memoryview(w)) for w in want], (rank, src, i)
    key = (src, i % 2)
    assert i > last.get(key, -1), f"out of order from {src}: {i} after {last[key]}"
    last[key] = i
    got += 1
for t in ts: t.join()
print(f"rank {rank} OK {got} thread level {eng.level_name}", flush=True)
if rank != 0:
    eng.send_control(0, ("bye",))
    eng.stop()
    eng.MPI.Finalize()
    _mpi._exit_process(0)
else:
    for _ in range(size - 1):
        assert eng.recv_control(30.0) is not None
    eng.stop()
'''


@needs_mpiexec
@pytest.mark.timeout(60)
def test_transport_frames_in_order_with_large_buffers(tmp_path: Path) -> None:
    """Frame lists of every size class (inline, boundary, separate MPI messages) arrive intact
    and in order per sender, between every pair of ranks, with sends from several threads."""
    pytest.importorskip("numpy")
    p = tmp_path / "transport.py"
    p.write_text(textwrap.dedent(TRANSPORT))
    job = Job(mpiexec(3, PY, str(p)))
    assert job.wait(45) == 0, job.report()
    assert job.out.count(" OK 120 ") == 3, job.report()


@needs_mpiexec
@pytest.mark.timeout(60)
def test_thread_level_below_serialized_still_works(tmp_path: Path) -> None:
    p = tmp_path / "small.py"
    p.write_text(textwrap.dedent('''
        from dtm_executor import DTMExecutor, current_executor
        def fib(n):
            if n < 2:
                return n
            ex = current_executor()
            a, b = ex.submit(fib, n - 1), ex.submit(fib, n - 2)
            return a.result() + b.result()
        if __name__ == "__main__":
            with DTMExecutor() as ex:
                print("fib", ex.submit(fib, 12).result(), sum(ex.map(abs, range(-50, 50))))
    '''))
    job = Job(STYLES["mpiexec+launcher"](3, p), env=_clean_env(MPI4PY_RC_THREAD_LEVEL="funneled"))
    assert job.wait(45) == 0, job.report()
    assert "fib 144 2500" in job.out, job.report()
    assert "thread level 'funneled'" in job.err, job.report()


# -- choosing the transport --------------------------------------------------------------------------
def test_world_size_from_the_environment() -> None:
    from dtm_executor._transports.mpi import world_size_from_env

    assert world_size_from_env({}) is None
    assert world_size_from_env({"HOME": "/root", "SLURM_NTASKS": "8"}) is None  # sbatch, no srun
    assert world_size_from_env({"PMI_SIZE": "4", "PMI_RANK": "0"}) == 4  # MPICH, Intel MPI
    assert world_size_from_env({"OMPI_COMM_WORLD_SIZE": "3"}) == 3  # Open MPI
    assert world_size_from_env({"MPI_LOCALNRANKS": "2"}) == 2
    assert world_size_from_env({"PMI_SIZE": "1", "PMI_RANK": "0"}) == 1  # a singleton
    assert world_size_from_env({"PMIX_RANK": "0", "SLURM_STEP_NUM_TASKS": "6"}) == 6  # srun --mpi=pmix
    assert world_size_from_env({"PMIX_RANK": "0"}) == 0  # ask MPI


def test_auto_is_local_without_mpi_and_never_imports_mpi4py() -> None:
    code = ("import sys, dtm_executor; from dtm_executor._executor import _choose_transport; "
            "print(_choose_transport('auto'), 'mpi4py' in sys.modules)")
    out = subprocess.run([PY, "-c", code], env=_clean_env(), capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["local", "False"], out.stderr
    env = _clean_env(PMI_SIZE="3", PMI_RANK="0")
    out = subprocess.run([PY, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["mpi", "False"], out.stderr
    env = _clean_env(DTM_EXECUTOR_TRANSPORT="local", PMI_SIZE="3", PMI_RANK="0")
    out = subprocess.run([PY, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["local", "False"], out.stderr


@needs_mpiexec
@pytest.mark.timeout(60)
def test_launcher_rejects_local_workers_under_mpi(tmp_path: Path) -> None:
    p = tmp_path / "nothing.py"
    p.write_text("print('should not run')\n")
    job = Job(mpiexec(2, PY, "-m", "dtm_executor", "-n", "3", str(p)))
    assert job.wait(45) == 2, job.report()
    assert "under MPI the number of ranks decides" in job.err, job.report()
    assert "should not run" not in job.out


def test_launcher_local_style_without_mpi(tmp_path: Path) -> None:
    p = tmp_path / "argv.py"
    p.write_text(textwrap.dedent('''
        import sys
        from dtm_executor import DTMExecutor
        def where(_):
            import os
            return os.environ.get("DTM_EXECUTOR_RANK")
        if __name__ == "__main__":
            with DTMExecutor() as ex:
                print(sys.argv[1:], ex.max_workers, sorted(set(ex.map(where, range(40), chunksize=1))))
            raise SystemExit(4)
    '''))
    job = Job([PY, "-m", "dtm_executor", "-n", "2", str(p), "a", "--b"])
    assert job.wait(60) == 4, job.report()
    assert "['a', '--b'] 2 " in job.out, job.report()

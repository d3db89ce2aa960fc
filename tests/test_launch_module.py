"""``python -m dtm_executor [-n N | --hostfile F] -m package.module args...``: run a module as
``python -m`` does (and ``mpiexec ... python -m mpi4py.futures -m mod``), locally, over TCP and
under MPI; the launcher's usage text and errors."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(180)

PY = sys.executable
_venv_mpiexec = Path(PY).parent / "mpiexec"
MPIEXEC = str(_venv_mpiexec) if _venv_mpiexec.exists() else shutil.which("mpiexec")
_MPI_VARS = ("PMI_", "PMIX_", "OMPI_", "MPI_LOCAL", "MV2_", "HYDRA_", "SLURM_")

USAGE = (
    "usage: python -m dtm_executor [-h] [-n N | --hostfile FILE] [--transport T] script.py [args ...]\n"
    "       python -m dtm_executor [-h] [-n N | --hostfile FILE] [--transport T] -m module [args ...]\n"
)

JOB = '''
import os
import sys

from dtm_executor import DTMExecutor


def where(_):
    return os.getpid()


def square(x):
    return x * x


if __name__ == "__main__":
    with DTMExecutor() as ex:
        pids = set(ex.map(where, range(60), chunksize=1))
        total = sum(ex.map(square, range(10)))
    print("RAN", __name__, __spec__.name, sys.argv[1:], os.path.basename(sys.argv[0]), total,
          os.getpid() not in pids or ex._kind == "mpi", flush=True)
    raise SystemExit(int(os.environ.get("JOB_STATUS", "0")))
'''

PKG_MAIN = '''
from dtm_executor import DTMExecutor


def cube(x):
    return x ** 3


if __name__ == "__main__":
    with DTMExecutor() as ex:
        print("PKG", __spec__.name, list(ex.map(cube, range(4))), flush=True)
'''

FAILS = '''
def boom():
    raise RuntimeError("module failed")


if __name__ == "__main__":
    boom()
'''


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "job.py").write_text(JOB)
    (pkg / "fails.py").write_text(FAILS)
    (pkg / "__main__.py").write_text(PKG_MAIN)
    (tmp_path / "hosts").write_text("localhost slots=2\n")
    return tmp_path


def run(cmd: list[str], cwd: Path, timeout: float = 120.0, **env: str) -> subprocess.CompletedProcess:
    """Run ``cmd`` in a session of its own; nothing of that session may outlive it."""
    e = {k: v for k, v in os.environ.items() if not k.startswith(_MPI_VARS)}
    e.pop("DTM_EXECUTOR_TRANSPORT", None)
    e.update(env)
    proc = subprocess.Popen(cmd, cwd=cwd, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{cmd} did not finish within {timeout} s\n{out}\n{err}", pytrace=False)
    end = time.monotonic() + 10
    while True:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        if time.monotonic() > end:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"processes of {cmd} outlived it", pytrace=False)
        time.sleep(0.1)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def launcher(*args: str) -> list[str]:
    return [PY, "-m", "dtm_executor", *args]


def test_module_runs_as_main_with_its_arguments(tree):
    r = run(launcher("-n", "2", "-m", "pkg.job", "a", "--b", "-n", "5"), tree, JOB_STATUS="3")
    assert r.returncode == 3, r.stderr
    assert r.stdout == "RAN __main__ pkg.job ['a', '--b', '-n', '5'] job.py 285 True\n", r.stderr


def test_module_arguments_are_optional(tree):
    r = run(launcher("-m", "pkg.job"), tree)
    assert (r.returncode, r.stdout) == (0, "RAN __main__ pkg.job [] job.py 285 True\n"), r.stderr


def test_package_runs_its___main__(tree):
    r = run(launcher("-n", "2", "-m", "pkg"), tree)
    assert (r.returncode, r.stdout) == (0, "PKG pkg.__main__ [0, 1, 8, 27]\n"), r.stderr


def test_module_over_tcp_with_a_hostfile(tree):
    r = run(launcher("--hostfile", "hosts", "-m", "pkg.job", "x"), tree)
    assert (r.returncode, r.stdout) == (0, "RAN __main__ pkg.job ['x'] job.py 285 True\n"), r.stderr


@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec next to this Python or on PATH (pip install mpich)")
def test_module_under_mpiexec(tree):
    pytest.importorskip("mpi4py")
    r = run([MPIEXEC, "-n", "3", *launcher("-m", "pkg.job", "y")], tree, JOB_STATUS="5")
    assert r.returncode == 5, r.stdout + r.stderr
    assert r.stdout == "RAN __main__ pkg.job ['y'] job.py 285 True\n", r.stderr  # rank 0 only


def test_module_exception_prints_its_traceback(tree):
    r = run(launcher("-n", "1", "-m", "pkg.fails"), tree)
    assert r.returncode == 1
    assert r.stderr.startswith("Traceback (most recent call last):\n")
    assert "fails.py" in r.stderr and "dtm_executor/__main__.py" not in r.stderr
    assert r.stderr.rstrip().endswith("RuntimeError: module failed")


@pytest.mark.parametrize(
    "args, error",
    [
        (["-m", "pkg.nope"], "No module named pkg.nope"),
        (["-m", "nope.job"], "Error while finding module specification for 'nope.job' "
                             "(ModuleNotFoundError: No module named 'nope')"),
        (["-n", "2", "-m"], "argument -m: expected a module name"),
        ([], "the following arguments are required: script.py or -m module"),
        (["-n", "2"], "the following arguments are required: script.py or -m module"),
        (["-n", "2", "--hostfile", "hosts", "-m", "pkg.job"],
         "argument --hostfile: not allowed with argument -n/--workers"),
        (["nope.py"], "no such script: nope.py"),
        (["-n", "0", "-m", "pkg.job"], "argument -n/--workers: expected a positive number, got 0"),
    ],
)
def test_launcher_errors_are_exact(tree, args, error):
    r = run(launcher(*args), tree)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == USAGE + f"python -m dtm_executor: error: {error}\n"


def test_launcher_usage_text(tree):
    r = run(launcher("-h"), tree)
    assert r.returncode == 0 and r.stdout.startswith(USAGE + "\n")
    assert "-m module [args ...]" in r.stdout and "script.py [args ...]" in r.stdout
    helps = {line.split()[0] for line in r.stdout.splitlines() if line.startswith("  -")}
    assert helps == {"-h,", "-n", "--hostfile", "--transport", "-m"}

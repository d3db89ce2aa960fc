"""Every program of DEAP DTM's guide, with only its import line changed, runs as a script and
prints what the guide describes (examples/dtm_guide/*.py, run in subprocesses with timeouts)."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dtm_executor import _transports

GUIDE = Path(__file__).resolve().parent.parent / "examples" / "dtm_guide"
TIMEOUT = 120

pytestmark = pytest.mark.timeout(TIMEOUT + 30)


def run(name: str, cwd: Path, *args: str, launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    """Run a guide program in ``cwd``; it must leave no file behind there."""
    before = set(os.listdir(cwd))
    env = dict(os.environ)
    env.pop("PYTHONWARNINGS", None)
    cmd = [*(launcher or []), sys.executable, str(GUIDE / name), *args]
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)  # the script and every worker it started
        out, err = proc.communicate()
        pytest.fail(f"{name} did not finish in {TIMEOUT} s\nstdout:\n{out}\nstderr:\n{err}")
    left = set(os.listdir(cwd)) - before
    assert not left, f"{name} left files in its working directory: {sorted(left)}"
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def ok(name: str, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    proc = run(name, cwd, *args)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stderr}"
    return proc


def test_the_examples_only_change_the_import_line():
    scripts = sorted(GUIDE.glob("*.py"))
    assert len(scripts) >= 8
    for path in scripts:
        tree = ast.parse(path.read_text())
        imports = [
            (node.module, [a.name for a in node.names]) for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dtm_executor")
        ]
        assert imports == [("dtm_executor", ["dtm"])], (path.name, imports)
        assert "start(" in path.read_text(), path.name


def test_intro(tmp_path):
    proc = ok("intro.py", tmp_path)
    assert proc.stdout == "999 results, from 2.000 to 999.001\n" and proc.stderr == ""


def test_isolation_per_worker(tmp_path):
    proc = ok("isolation.py", tmp_path)
    lines = proc.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Results : ["), proc.stdout
    results = ast.literal_eval(lines[0][len("Results : "):])
    # each worker process adds to its own `foo`: every result is its item plus the items that
    # worker ran before it, so it is at least the item and at most the serial sum of all
    assert len(results) == 30
    assert all(i <= r <= sum(range(30)) for i, r in enumerate(results))
    assert results[-1] >= 29


def test_global_logfile(tmp_path):
    proc = ok("logfile.py", tmp_path)  # (and myLogFile is gone: run() checks)
    assert proc.stdout == "200 tasks wrote to their worker's myLogFile\n" and proc.stderr == ""


def test_nested_function_now_works(tmp_path):
    proc = ok("nested_function.py", tmp_path)
    assert proc.stdout == f"Results : {[n ** 2 for n in range(30)]}\n" and proc.stderr == ""


@pytest.mark.parametrize("name", ["active_waiting.py", "waiting.py"])
def test_asynchronous_waiting(tmp_path, name):
    proc = ok(name, tmp_path)
    assert proc.stdout == "100 results, the last: 101\n" and proc.stderr == ""


def test_every_guide_program_prints_its_outcome(tmp_path):
    """A program that succeeds says so: none is silent."""
    for path in sorted(GUIDE.glob("*.py")):
        if path.name == "tcp_localhost.py":
            continue  # needs its hostfile argument: test_tcp_backend_with_localhost_hostfile
        proc = run(path.name, tmp_path)
        assert proc.stdout.strip(), f"{path.name} printed nothing"


def test_exceptions(tmp_path):
    proc = run("exceptions.py", tmp_path)
    assert proc.returncode == 1
    assert proc.stdout.splitlines() == [
        "apply raised: bad item 3",
        "map raised: bad item 3",
        "successful: False",
        "get raised: bad item 3",
        "good map: [1, 2]",
    ]
    # the root task's exception is thrown by dtm.start and stops the run
    assert proc.stderr.rstrip().endswith("RuntimeError: the root task failed")
    # caught task exceptions reach their callers; unlike DTM (a warning for each), they are not
    # printed: only the root task's traceback is on stderr
    assert "bad item 3" not in proc.stderr


def test_tcp_backend_with_localhost_hostfile(tmp_path):
    (tmp_path / "myHostFile").write_text("localhost slots=2\n")
    proc = ok("tcp_localhost.py", tmp_path, "--dtmTCPhosts=myHostFile")
    assert proc.stdout.splitlines() == ["999 results"]


def test_deap_tutorial_onemax(tmp_path):
    pytest.importorskip("deap")
    proc = ok("deap_onemax.py", tmp_path)
    m = re.fullmatch(r"Best individual has fitness (\d+)\n", proc.stdout)
    assert m and int(m.group(1)) >= 90, proc.stdout


@pytest.mark.skipif(_transports.find("mpi") is None, reason="the MPI transport is not installed")
def test_guide_programs_under_mpiexec(tmp_path):
    mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
    if mpiexec is None:
        pytest.skip("no mpiexec")
    script = tmp_path / "mpi_isolation.py"
    script.write_text((GUIDE / "isolation.py").read_text().replace(
        "from dtm_executor import dtm\n",
        "from dtm_executor import dtm\ndtm.setOptions(communicationManager='deap.dtm.mpi4py')\n",
    ))
    proc = subprocess.run([mpiexec, "-n", "3", sys.executable, str(script)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("Results : [") == 1, proc.stdout  # only rank 0 runs the root task
    # the guide's own command line, `mpirun -n * python myProgram.py`, on the unchanged intro
    proc = subprocess.run([mpiexec, "-n", "3", sys.executable, str(GUIDE / "intro.py")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr


GUIDE_PROGRAMS = ["intro", "isolation", "logfile", "nested_function", "active_waiting", "waiting",
                  "exceptions", "deap_onemax"]


@pytest.mark.skipif(_transports.find("mpi") is None, reason="the MPI transport is not installed")
@pytest.mark.parametrize("name", GUIDE_PROGRAMS)
def test_every_guide_program_under_mpiexec_as_locally(tmp_path, name):
    """The guide's own command line (`mpirun -n N python myProgram.py`) on every program: the
    same status and, but for isolation.py's worker-dependent sums, the same output as locally."""
    mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
    if mpiexec is None:
        pytest.skip("no mpiexec")
    local = run(f"{name}.py", tmp_path)
    under_mpi = run(f"{name}.py", tmp_path, launcher=[mpiexec, "-n", "3"])
    assert under_mpi.returncode == local.returncode, under_mpi.stderr
    if name == "isolation":  # per-worker globals: values differ, the shape does not
        assert under_mpi.stdout.count("Results : [") == local.stdout.count("Results : [") == 1
    else:
        assert under_mpi.stdout == local.stdout, under_mpi.stderr

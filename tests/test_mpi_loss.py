"""Under MPI a lost rank cannot be replaced: the job must end, promptly and completely (not hang,
not leave ranks behind), in both launch styles."""

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

pytest.importorskip("mpi4py")

PY = sys.executable
_venv = Path(PY).parent / "mpiexec"
MPIEXEC = str(_venv) if _venv.exists() else shutil.which("mpiexec")
_MPI_VARS = ("PMI_", "PMIX_", "OMPI_", "MPI_LOCAL", "MV2_", "HYDRA_", "SLURM_")

SCRIPT = textwrap.dedent("""\
    import os, time
    from dtm_executor import DTMExecutor

    def f(x):
        if x == 5:
            os._exit(7)  # a task that takes its rank down
        time.sleep(0.05)
        return x

    if __name__ == "__main__":
        with DTMExecutor() as ex:
            print("sum", sum(ex.map(f, range(40), chunksize=1)), flush=True)
    """)


def _session_alive(sid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                rest = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(rest[3]) == sid and rest[0] not in ("Z", "X"):
                out.append(int(d))
    return out


@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec (pip install mpich)")
@pytest.mark.timeout(150)
@pytest.mark.parametrize("launcher", [False, True], ids=["plain", "launcher"])
def test_a_lost_rank_ends_the_job(tmp_path: Path, launcher: bool) -> None:
    script = tmp_path / "poison.py"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith(_MPI_VARS)}
    env.pop("DTM_EXECUTOR_TRANSPORT", None)
    cmd = [MPIEXEC, "-n", "3", PY] + (["-m", "dtm_executor"] if launcher else []) + [str(script)]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env=env, cwd=tmp_path)
    try:
        out, err = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("the MPI job hung after losing a rank")
    elapsed = time.monotonic() - t0
    end = time.monotonic() + 10
    while _session_alive(proc.pid) and time.monotonic() < end:
        time.sleep(0.05)
    left = _session_alive(proc.pid)
    if left:
        os.killpg(proc.pid, signal.SIGKILL)
    assert not left, f"processes left behind: {left}"
    assert proc.returncode != 0, (out, err)
    assert "sum" not in out  # no result was made up
    assert elapsed < 60, f"took {elapsed:.1f} s"

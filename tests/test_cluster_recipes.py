"""The SLURM batch scripts of docs/cluster.md run as written.

Each ``#!/bin/bash`` block of the page is run with bash, in a directory holding a small
``ga.py``, with the variables SLURM sets and ``VENV`` naming this test's virtual environment.
Only what a cluster alone has is stood in for: ``srun`` (starts the ranks with ``mpiexec``, as
SLURM's PMI-2 launch does) and ``scontrol show hostnames`` (prints the job's nodes: here
``localhost``, so the TCP recipe starts its workers without ssh).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(240)

PAGE = Path(__file__).resolve().parent.parent / "docs" / "cluster.md"
VENV = Path(sys.executable).parent.parent
_MPI_VARS = ("PMI_", "PMIX_", "OMPI_", "MPI_LOCAL", "MV2_", "HYDRA_", "SLURM_")

GA = '''
import sys

from dtm_executor import DTMExecutor


def fitness(x):
    return x * x


if __name__ == "__main__":
    with DTMExecutor() as ex:
        print("GA", ex._kind, ex.max_workers, sum(ex.map(fitness, range(100))), sys.argv[1:], flush=True)
'''

SRUN = '''#!/bin/sh
# stands in for SLURM's srun: start the ranks with mpiexec (the PMI-2 launch of the mpich wheel)
n=1
while [ $# -gt 0 ]; do
    case "$1" in
        --ntasks=*) n="${1#--ntasks=}"; shift ;;
        -n|--ntasks) n="$2"; shift 2 ;;
        --*) shift ;;
        *) break ;;
    esac
done
exec mpiexec -n "$n" "$@"
'''

SCONTROL = '''#!/bin/sh
# stands in for SLURM's scontrol: only "scontrol show hostnames NODELIST" (a comma list here)
[ "$1" = show ] && [ "$2" = hostnames ] || exit 2
echo "$3" | tr ',' '\\n'
'''


def recipes() -> dict[str, str]:
    blocks = re.findall(r"```bash\n(#!/bin/bash\n.*?)```", PAGE.read_text(), re.S)
    out = {}
    for b in blocks:
        name = re.search(r"#SBATCH --job-name=(\S+)", b)
        assert name, f"a batch script of {PAGE.name} has no --job-name:\n{b}"
        out[name.group(1)] = b
    return out


def test_the_page_has_the_three_recipes():
    got = recipes()
    assert set(got) == {"ga-one-node", "ga-mpi", "ga-tcp"}
    assert "srun --mpi=pmi2" in got["ga-mpi"] and "--ntasks=" in got["ga-mpi"]
    assert "--cpus-per-task" in got["ga-one-node"]
    assert "scontrol show hostnames" in got["ga-tcp"]
    for text in got.values():
        assert 'source "$VENV/bin/activate"' in text


def _run(script: Path, cwd: Path, env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess:
    proc = subprocess.Popen(["bash", str(script)], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{script.name} did not finish within {timeout} s\n{out}\n{err}", pytrace=False)
    end = time.monotonic() + 10
    while True:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        if time.monotonic() > end:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"processes of {script.name} outlived it", pytrace=False)
        time.sleep(0.1)
    return subprocess.CompletedProcess(script.name, proc.returncode, out, err)


@pytest.mark.parametrize(
    "job, expected",
    [
        ("ga-one-node", "GA local 2 328350 ['--generations', '50']\n"),
        ("ga-mpi", "GA mpi 3 328350 ['--generations', '50']\n"),
        ("ga-tcp", "GA tcp 2 328350 ['--generations', '50']\n"),
    ],
)
def test_recipe_runs_as_written(tmp_path, job, expected):
    if not (VENV / "bin" / "activate").exists():
        pytest.skip("the tests do not run in a virtual environment (the recipes activate one)")
    if job == "ga-mpi":
        pytest.importorskip("mpi4py")
        if shutil.which("mpiexec", path=str(VENV / "bin")) is None:
            pytest.skip("no mpiexec in the virtual environment (pip install mpich)")
    text = recipes()[job]
    script = tmp_path / f"{job}.sh"
    script.write_text(text)
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0  # the syntax, at least
    (tmp_path / "ga.py").write_text(GA)
    shims = tmp_path / "cluster-bin"
    shims.mkdir()
    for name, body in (("srun", SRUN), ("scontrol", SCONTROL)):
        (shims / name).write_text(body)
        (shims / name).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(_MPI_VARS)}
    env.pop("DTM_EXECUTOR_TRANSPORT", None)
    env.pop("DTM_EXECUTOR_HOSTFILE", None)
    env.update(
        VENV=str(VENV), PATH=f"{shims}:{env.get('PATH', '/usr/bin:/bin')}",
        SLURM_SUBMIT_DIR=str(tmp_path), SLURM_JOB_ID="4242", SLURM_JOB_NODELIST="localhost",
        SLURM_NTASKS="3", SLURM_CPUS_PER_TASK="2",
    )
    r = _run(script, tmp_path, env)
    assert (r.returncode, r.stdout) == (0, expected), r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["cluster-bin", "ga.py", f"{job}.sh"]), "the recipe left files behind"

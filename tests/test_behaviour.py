"""One behaviour suite (submit, map, nested, exceptions, cancel, shutdown, worker loss: see
tests/executor_scenarios.py) on every transport: memory, local, TCP on localhost, and MPI
(``mpiexec -n 3``, one job running the same scenario functions, tests/behaviour_mpi.py)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator

import pytest

import executor_scenarios
from behaviour_suite import BehaviourMixin, create_executor_tests, kill_worker_process

HERE = Path(__file__).resolve().parent


class MemoryMixin:
    transport = "memory"

    @staticmethod
    def lose(ex, rank):
        ex._pool.lose(rank)


class LocalMixin:
    transport = "local"
    lose = staticmethod(kill_worker_process)


class TcpMixin:
    transport = "tcp"
    lose = staticmethod(kill_worker_process)


create_executor_tests(globals(), BehaviourMixin, (MemoryMixin, LocalMixin, TcpMixin),
                      marks=(pytest.mark.timeout(120),))


# -- MPI: one job runs every scenario, each test reads its own line ---------------------------
@pytest.fixture(scope="module")
def mpi_job(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    pytest.importorskip("mpi4py", reason="the MPI transport needs mpi4py")
    from test_mpi import MPIEXEC, PY, Job

    if MPIEXEC is None:
        pytest.skip("no mpiexec next to this Python or on PATH (pip install mpich)")
    job = Job([MPIEXEC, "-n", "3", PY, str(HERE / "behaviour_mpi.py"), str(tmp_path_factory.mktemp("mpi"))])
    code = job.wait(240)
    assert code == 0, job.report()
    yield job.out


@pytest.mark.timeout(300)
@pytest.mark.parametrize("scenario", list(executor_scenarios.SCENARIOS))
def test_mpi_behaviour(mpi_job: str, scenario: str) -> None:
    """Under ``mpiexec -n 3`` (every rank a worker, rank 0 the hub too): each scenario passed
    (worker loss is not one an MPI job survives: the scenario is empty there)."""
    assert f"OK {scenario}\n" in mpi_job, mpi_job


def test_every_scenario_is_a_test() -> None:
    names = {n for n in dir(BehaviourMixin) if n.startswith("test_")}
    assert names == {f"test_{s}" for s in executor_scenarios.SCENARIOS}
    assert sys.modules[__name__].TestMemoryBehaviour.transport == "memory"  # type: ignore[attr-defined]

"""The behaviour scenarios (tests/executor_scenarios.py) under MPI, run by tests/test_behaviour.py:

    mpiexec -n 3 python tests/behaviour_mpi.py SCRATCH_DIR

Every rank runs this script. The first ``DTMExecutor()`` is where ranks > 0 stay: they serve
rank 0's executors, one after the other, until rank 0's program ends. Rank 0 then runs the
scenarios and prints ``OK <scenario>`` for each that passed.
"""

from __future__ import annotations

import sys

from dtm_executor import DTMExecutor
from executor_scenarios import Context, run_all

if __name__ == "__main__":
    with DTMExecutor(transport="mpi") as ex:  # ranks > 0 never return from here
        print(f"MPI workers {ex.max_workers}", flush=True)
    ctx = Context("mpi", sys.argv[1], lose=None, fixed_workers=True)
    for name in run_all(ctx):
        print(f"OK {name}", flush=True)

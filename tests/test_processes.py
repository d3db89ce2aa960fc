"""Real programs in real processes: however the main program ends (SIGKILL, Ctrl-C), no worker
outlives it; a program without the ``__main__`` guard gets an error instead of a fork bomb; what
a script defines at module level (functions, classes, DEAP ``creator`` types) works on workers.

Each script runs in a session of its own (``run_script`` fixture), so all its processes can be
found and are checked (then killed) at teardown.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

pytestmark = pytest.mark.timeout(180)

_SLOW_SCRIPT = """\
import os, sys, time
from dtm_executor import DTMExecutor

def slow(t):
    # one write(): lines from the two workers share a pipe and must not interleave (print() with
    # PYTHONUNBUFFERED writes "started", the pid and the newline separately)
    os.write(1, f"started {os.getpid()}\\n".encode())
    time.sleep(t)
    return t

def main(mode, duration):
    print("pids", *[p.pid for p in ex._pool.procs.values()], flush=True)
    if mode == "map":
        for r in ex.map(slow, [duration] * 1000):
            print("result", r, flush=True)
    else:
        fs = [ex.submit(slow, duration) for _ in range(8)]
        for f in fs:
            print("result", f.result(), flush=True)

if __name__ == "__main__":
    mode, duration, use_with = sys.argv[1], float(sys.argv[2]), sys.argv[3] == "with"
    if use_with:
        with DTMExecutor(2) as ex:
            main(mode, duration)
    else:
        ex = DTMExecutor(2)
        main(mode, duration)
"""


def _start_and_get_workers(run_script, *args, started=2):
    """Start the slow script; return (run, worker pids) once ``started`` tasks are running."""
    run = run_script(_SLOW_SCRIPT, *args)
    pids: list[int] = []
    seen = 0
    while not pids or seen < started:
        line = run.readline(60)
        if not line:
            pytest.fail(f"the script ended early: rc={run.wait(10)}\n{run.stderr}")
        if line.startswith("pids"):
            pids = [int(p) for p in line.split()[1:]]
        elif line.startswith("started"):
            seen += 1
    assert len(pids) == 2
    return run, pids


def _assert_all_gone(proctools, pids, timeout=15):
    alive = proctools.wait_until(lambda: not any(map(proctools.pid_alive, pids)), timeout)
    assert alive, "still running: " + ", ".join(
        proctools.describe(p) for p in pids if proctools.pid_alive(p)
    )


@pytest.mark.parametrize("mode, duration", [("submit", 60), ("map", 0.2)])
def test_sigkill_of_main_leaves_no_workers(run_script, proctools, mode, duration):
    run, pids = _start_and_get_workers(run_script, mode, str(duration), "plain")
    assert all(map(proctools.pid_alive, pids))
    os.kill(run.pid, signal.SIGKILL)
    assert run.wait(30) == -signal.SIGKILL
    _assert_all_gone(proctools, pids)
    assert proctools.wait_until(lambda: not run.members(), 10), run.members()


@pytest.mark.parametrize("target", ["main", "group"])
@pytest.mark.parametrize("use_with", ["with", "plain"])
def test_ctrl_c_while_tasks_run(run_script, proctools, target, use_with):
    # "group" is what a terminal's Ctrl-C does: SIGINT to every process of the foreground group
    run, pids = _start_and_get_workers(run_script, "map", "0.2", use_with)
    run.readline(60)  # a result has come back: the map is in full swing
    t0 = time.monotonic()
    if target == "group":
        os.killpg(run.pid, signal.SIGINT)
    else:
        os.kill(run.pid, signal.SIGINT)
    rc = run.wait(60)
    assert rc != 0
    assert "KeyboardInterrupt" in run.stderr
    _assert_all_gone(proctools, pids)
    assert time.monotonic() - t0 < 30


def test_ctrl_c_inside_with_does_not_wait_for_long_tasks(run_script, proctools):
    run, pids = _start_and_get_workers(run_script, "submit", "120", "with")
    t0 = time.monotonic()
    os.killpg(run.pid, signal.SIGINT)
    rc = run.wait(60)
    assert rc != 0
    assert "KeyboardInterrupt" in run.stderr
    _assert_all_gone(proctools, pids)
    assert time.monotonic() - t0 < 30  # the 120 s tasks were not waited for


def test_ctrl_c_without_with_does_not_wait_for_long_tasks(run_script, proctools):
    run, pids = _start_and_get_workers(run_script, "submit", "120", "plain")
    os.killpg(run.pid, signal.SIGINT)
    rc = run.wait(20)  # fails the test if the 120 s tasks are waited for
    assert rc != 0
    assert "KeyboardInterrupt" in run.stderr
    _assert_all_gone(proctools, pids)


def test_executor_at_module_level_without_main_guard(run_script):
    run = run_script("""\
        from dtm_executor import DTMExecutor

        ex = DTMExecutor(2)  # no `if __name__ == "__main__":` guard
        print("result", ex.submit(pow, 2, 3).result(), flush=True)
        """)
    most = 0
    end = time.monotonic() + 60
    while run.proc.poll() is None and time.monotonic() < end:
        most = max(most, len(run.members()))
        time.sleep(0.02)
    rc = run.wait(10)
    assert most <= 3, f"{most} processes in the script's session: workers started workers"
    assert rc != 0
    assert "result" not in run.stdout
    assert "BrokenDTMExecutor" in run.stderr
    assert "__name__ == '__main__'" in run.stderr  # the error says how to fix it


def test_main_module_definitions_work_on_workers(run_script):
    run = run_script("""\
        import dataclasses, os
        from dtm_executor import DTMExecutor, current_executor

        SCALE = 3

        def scaled(x):
            return x * SCALE

        @dataclasses.dataclass
        class Point:
            x: int
            y: int

            def norm2(self):
                return self.x ** 2 + self.y ** 2

        def make_point(i):
            return Point(i, -i)

        def point_norm(p):
            return p.norm2()

        class Adder:
            def __init__(self, k):
                self.k = k

            def __call__(self, x):
                return x + self.k

        class ScriptError(Exception):
            pass

        def fails(x):
            raise ScriptError(f"script error {x}")

        def fib(n):
            if n < 2:
                return n
            ex = current_executor()
            a, b = ex.submit(fib, n - 1), ex.submit(fib, n - 2)
            return a.result() + b.result()

        def where(_):
            return os.getpid()

        if __name__ == "__main__":
            with DTMExecutor(2) as ex:
                workers = {p.pid for p in ex._pool.procs.values()}
                print("scaled", list(ex.map(scaled, range(5))))
                pts = list(ex.map(make_point, range(4)))
                print("points", all(type(p) is Point for p in pts), pts[3])
                print("norms", list(ex.map(point_norm, pts)))
                print("method", ex.submit(Point(3, 4).norm2).result())
                print("callable", ex.submit(Adder(10), 5).result())
                print("fib", ex.submit(fib, 12).result())
                try:
                    ex.submit(fails, 1).result()
                except ScriptError as e:
                    print("error", type(e).__name__, e)
                ran_on = set(ex.map(where, range(50), chunksize=1))
                print("on workers", ran_on <= workers and os.getpid() not in ran_on)
        """)
    assert run.wait(120) == 0, run.stderr
    out = run.stdout.splitlines()
    assert out == [
        "scaled [0, 3, 6, 9, 12]",
        "points True Point(x=3, y=-3)",
        "norms [0, 2, 8, 18]",
        "method 25",
        "callable 15",
        "fib 144",
        "error ScriptError script error 1",
        "on workers True",
    ], run.stderr


def test_inline_main_definitions_work_on_workers(run_script):
    # ``python -c``: __main__ has no file the workers could import, so functions go by value
    run = run_script("""\
        from dtm_executor import DTMExecutor

        def cube(x):
            return x ** 3

        class Box:
            def __init__(self, v):
                self.v = v

        def unbox(b):
            return b.v * 2

        if __name__ == "__main__":
            with DTMExecutor(2) as ex:
                print(list(ex.map(cube, range(5))), ex.submit(unbox, Box(21)).result())
        """, inline=True)
    assert run.wait(120) == 0, run.stderr
    assert run.stdout.strip() == "[0, 1, 8, 27, 64] 42"


def test_deap_creator_at_module_level(run_script):
    run = run_script("""\
        import random
        from deap import algorithms, base, creator, tools
        from dtm_executor import DTMExecutor

        creator.create("FitnessMax", base.Fitness, weights=(1.0,))
        creator.create("Individual", list, fitness=creator.FitnessMax)

        def evaluate(ind):
            return (sum(ind),)

        def rebuild(ind):
            # an Individual made on the worker travels back
            new = creator.Individual(ind)
            new.fitness.values = evaluate(new)
            return new

        toolbox = base.Toolbox()
        toolbox.register("attr", random.randint, 0, 1)
        toolbox.register("individual", tools.initRepeat, creator.Individual, toolbox.attr, 30)
        toolbox.register("population", tools.initRepeat, list, toolbox.individual)
        toolbox.register("evaluate", evaluate)
        toolbox.register("mate", tools.cxTwoPoint)
        toolbox.register("mutate", tools.mutFlipBit, indpb=0.05)
        toolbox.register("select", tools.selTournament, tournsize=3)

        if __name__ == "__main__":
            random.seed(7)
            pop = toolbox.population(n=40)
            with DTMExecutor(2) as ex:
                toolbox.register("map", ex.map)
                back = list(ex.map(rebuild, pop))
                # (deap >= 1.4 rebuilds creator classes when unpickling: compare by name)
                ok = all(type(b).__name__ == "Individual" and b.fitness.valid for b in back)
                print("rebuilt", ok, [b.fitness.values[0] for b in back] == [sum(p) for p in pop])
                best0 = max(sum(p) for p in pop)
                pop, _ = algorithms.eaSimple(pop, toolbox, cxpb=0.5, mutpb=0.2, ngen=8, verbose=False)
                best = max(ind.fitness.values[0] for ind in pop)
                print("evolved", best >= best0, all(ind.fitness.valid for ind in pop))
        """)
    assert run.wait(120) == 0, run.stderr
    assert run.stdout.splitlines() == ["rebuilt True True", "evolved True True"], run.stderr

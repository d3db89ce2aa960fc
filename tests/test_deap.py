"""DEAP with ``toolbox.register("map", ex.map)``: the GA must evolve exactly as with the built-in
``map`` for the same seed (evaluation is deterministic; all randomness stays in this process)."""

from __future__ import annotations

import random
import threading
from typing import Any

import pytest

deap = pytest.importorskip("deap")
from deap import algorithms, base, creator, tools  # noqa: E402

from dtm_executor import DTMExecutor  # noqa: E402

pytestmark = pytest.mark.timeout(120)

# Module level, so worker processes (which import this module to find eval_onemax) define them
# too. Names of our own, so another module's creator classes cannot clash with them.
creator.create("FitnessMaxDTMTest", base.Fitness, weights=(1.0,))
creator.create("IndividualDTMTest", list, fitness=creator.FitnessMaxDTMTest)

LENGTH = 40
POPULATION = 60
GENERATIONS = 8


def eval_onemax(individual: list[int]) -> tuple[float]:
    return (float(sum(individual)),)


def make_toolbox() -> base.Toolbox:
    toolbox = base.Toolbox()
    toolbox.register("attr_bool", random.randint, 0, 1)
    toolbox.register("individual", tools.initRepeat, creator.IndividualDTMTest, toolbox.attr_bool, LENGTH)
    toolbox.register("population", tools.initRepeat, list, toolbox.individual)
    toolbox.register("evaluate", eval_onemax)
    toolbox.register("mate", tools.cxTwoPoint)
    toolbox.register("mutate", tools.mutFlipBit, indpb=0.05)
    toolbox.register("select", tools.selTournament, tournsize=3)
    return toolbox


def run_simple(toolbox: base.Toolbox, seed: int) -> tuple[Any, ...]:
    random.seed(seed)
    pop = toolbox.population(n=POPULATION)
    hof = tools.HallOfFame(3)
    stats = tools.Statistics(lambda ind: ind.fitness.values[0])
    stats.register("max", max)
    stats.register("sum", sum)
    pop, logbook = algorithms.eaSimple(
        pop, toolbox, cxpb=0.5, mutpb=0.2, ngen=GENERATIONS, stats=stats, halloffame=hof, verbose=False
    )
    return _snapshot(pop, hof, logbook)


def run_mu_plus_lambda(toolbox: base.Toolbox, seed: int) -> tuple[Any, ...]:
    random.seed(seed)
    pop = toolbox.population(n=POPULATION)
    hof = tools.HallOfFame(3)
    pop, logbook = algorithms.eaMuPlusLambda(
        pop, toolbox, mu=POPULATION, lambda_=POPULATION, cxpb=0.6, mutpb=0.3,
        ngen=GENERATIONS, halloffame=hof, verbose=False,
    )
    return _snapshot(pop, hof, logbook)


def _is_individual(ind: Any) -> bool:
    # DEAP pickles creator classes by re-creating them (deap.creator.meta_create), so an
    # individual that travelled has an equal class, not necessarily the identical one
    return type(ind).__name__ == "IndividualDTMTest" and isinstance(ind, list)


def _snapshot(pop: list[Any], hof: Any, logbook: Any) -> tuple[Any, ...]:
    assert all(_is_individual(ind) for ind in pop)
    assert all(ind.fitness.valid for ind in pop)
    return (
        [list(ind) for ind in pop],
        [ind.fitness.values for ind in pop],
        [(list(ind), ind.fitness.values) for ind in hof],
        [dict(entry) for entry in logbook],
    )


def _close(ex: DTMExecutor, timeout: float = 60.0) -> None:
    """Shut ``ex`` down; if that hangs (a scheduler bug), kill its workers so the run goes on."""
    t = threading.Thread(target=ex.shutdown, kwargs={"wait": True, "cancel_futures": True}, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        ex._pool.kill()
        pytest.fail(f"shutdown hung for {timeout} s; the workers were killed")


@pytest.fixture(scope="module", params=[1, 2], ids=["1worker", "2workers"])
def ex(request):
    ex = DTMExecutor(request.param)
    yield ex
    _close(ex)


@pytest.mark.parametrize("algorithm", [run_simple, run_mu_plus_lambda], ids=["eaSimple", "eaMuPlusLambda"])
@pytest.mark.parametrize("seed", [64, 2024])
def test_onemax_same_as_builtin_map(ex, algorithm, seed):
    serial = algorithm(make_toolbox(), seed)
    toolbox = make_toolbox()
    toolbox.register("map", ex.map)
    distributed = algorithm(toolbox, seed)
    pop, fitnesses, hof, logbook = distributed
    assert pop == serial[0]
    assert fitnesses == serial[1]
    assert hof == serial[2]
    assert logbook == serial[3]
    # the GA did something: every generation evaluated individuals through the executor
    assert len(logbook) == GENERATIONS + 1
    assert all(entry["nevals"] > 0 for entry in logbook)


def test_individuals_travel_to_workers_and_back(ex):
    """Individuals (instances of creator classes) go to the workers and come back equal."""
    random.seed(1)
    toolbox = make_toolbox()
    pop = toolbox.population(n=10)
    back = list(ex.map(_identity, pop))
    assert back == pop
    assert all(_is_individual(ind) for ind in back)
    assert [ind.fitness.weights for ind in back] == [(1.0,)] * len(pop)


def _identity(x: Any) -> Any:
    return x

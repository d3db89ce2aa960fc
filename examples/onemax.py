"""DEAP's OneMax genetic algorithm with its evaluations spread over a `DTMExecutor`.

The only change from the sequential program is ``toolbox.register("map", ex.map)``: DEAP's
algorithms call ``toolbox.map(toolbox.evaluate, ...)`` for each generation. ``--cost`` adds a
busy per-evaluation cost (in milliseconds) so that there is something worth distributing;
``--serial`` runs the same GA with the built-in ``map`` for comparison.

Run it with ``python examples/onemax.py [--cost MS] [--workers N] [--serial]``.
"""

from __future__ import annotations

import argparse
import random
import time
from typing import Any

from deap import algorithms, base, creator, tools

from dtm_executor import DTMExecutor

# Module level, so that worker processes (which import this module) know these classes too.
creator.create("FitnessMax", base.Fitness, weights=(1.0,))
creator.create("Individual", list, fitness=creator.FitnessMax)


def eval_onemax(individual: list[int], cost: float = 0.0) -> tuple[float]:
    if cost > 0:
        end = time.perf_counter() + cost
        while time.perf_counter() < end:  # stands in for an expensive, CPU-bound evaluation
            pass
    return (float(sum(individual)),)


def make_toolbox(length: int, cost: float) -> base.Toolbox:
    toolbox = base.Toolbox()
    toolbox.register("attr_bool", random.randint, 0, 1)
    toolbox.register("individual", tools.initRepeat, creator.Individual, toolbox.attr_bool, length)
    toolbox.register("population", tools.initRepeat, list, toolbox.individual)
    toolbox.register("evaluate", eval_onemax, cost=cost)
    toolbox.register("mate", tools.cxTwoPoint)
    toolbox.register("mutate", tools.mutFlipBit, indpb=0.05)
    toolbox.register("select", tools.selTournament, tournsize=3)
    return toolbox


def run_ga(toolbox: base.Toolbox, args: argparse.Namespace) -> tuple[Any, int]:
    random.seed(args.seed)
    pop = toolbox.population(n=args.population)
    hof = tools.HallOfFame(1)
    _, logbook = algorithms.eaSimple(
        pop, toolbox, cxpb=0.5, mutpb=0.2, ngen=args.generations, halloffame=hof, verbose=False
    )
    evaluations = sum(entry["nevals"] for entry in logbook)
    return hof[0], evaluations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--population", type=int, default=300)
    parser.add_argument("--generations", type=int, default=40)
    parser.add_argument("--length", type=int, default=100, help="bits per individual")
    parser.add_argument("--cost", type=float, default=0.0, help="busy milliseconds per evaluation")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: CPUs)")
    parser.add_argument("--serial", action="store_true", help="use the built-in map instead")
    parser.add_argument("--seed", type=int, default=64)
    args = parser.parse_args()

    toolbox = make_toolbox(args.length, args.cost / 1000.0)
    start = time.perf_counter()
    if args.serial:
        best, evaluations = run_ga(toolbox, args)
        where = "the built-in map"
    else:
        with DTMExecutor(args.workers) as ex:
            toolbox.register("map", ex.map)
            best, evaluations = run_ga(toolbox, args)
            where = f"DTMExecutor with {ex.max_workers} worker(s)"
    elapsed = time.perf_counter() - start

    bits = "".join(str(b) for b in best)
    print(f"best individual: fitness {best.fitness.values[0]:.0f}/{args.length}")
    print(f"  {bits}")
    print(f"{evaluations} evaluations over {args.generations} generations "
          f"on {where}: {elapsed:.2f} s")


if __name__ == "__main__":
    main()

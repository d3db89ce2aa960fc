# DEAP's tutorial "Using Multiple Processors" (DEAP 0.7), which distributed an evolutionary
# algorithm with `toolbox.register("map", dtm.map)` and `dtm.start(main)`, made into a complete
# OneMax program, with one change: the import line (was: from deap import dtm).
import random

from deap import algorithms, base, creator, tools

from dtm_executor import dtm

creator.create("FitnessMax", base.Fitness, weights=(1.0,))
creator.create("Individual", list, fitness=creator.FitnessMax)

def evalOneMax(individual):
    return sum(individual),

toolbox = base.Toolbox()
toolbox.register("attr_bool", random.randint, 0, 1)
toolbox.register("individual", tools.initRepeat, creator.Individual, toolbox.attr_bool, 100)
toolbox.register("population", tools.initRepeat, list, toolbox.individual)
toolbox.register("evaluate", evalOneMax)
toolbox.register("mate", tools.cxTwoPoint)
toolbox.register("mutate", tools.mutFlipBit, indpb=0.05)
toolbox.register("select", tools.selTournament, tournsize=3)

toolbox.register("map", dtm.map)

def main():
    random.seed(64)
    pop = toolbox.population(n=300)
    hof = tools.HallOfFame(1)
    algorithms.eaSimple(pop, toolbox, cxpb=0.5, mutpb=0.2, ngen=40, halloffame=hof, verbose=False)
    print("Best individual has fitness %d" % hof[0].fitness.values[0])

if __name__ == "__main__":
    dtm.start(main)

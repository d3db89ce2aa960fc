# DTM guide, 6.5.5 "Pickling": the program the guide calls faulty ("TypeError: can't pickle
# function objects"), with the import line changed (was: from deap import dtm) and its results
# printed. It now runs:
# functions that cannot be pickled by reference, like `bar` defined inside `main`, travel by
# value (cloudpickle).
from dtm_executor import dtm
def main():
    def bar(n):
        return n**2

    listNbr = range(30)
    results = dtm.map(bar, listNbr)
    print("Results : " + str(results))

dtm.start(main)

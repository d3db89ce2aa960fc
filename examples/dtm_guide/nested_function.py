# DTM guide, 6.5.5 "Pickling": the program the guide calls faulty ("TypeError: can't pickle
# function objects"), with one change: the import line (was: from deap import dtm). It now runs:
# functions that cannot be pickled by reference, like `bar` defined inside `main`, travel by
# value (cloudpickle).
from dtm_executor import dtm
def main():
    def bar(n):
        return n**2

    listNbr = range(30)
    results = dtm.map(bar, listNbr)

dtm.start(main)

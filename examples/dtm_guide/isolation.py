# DTM guide, 6.5.1 "Isolation per worker" (first program), with one change: the import line
# (was: from deap import dtm). Each worker process has its own `foo`, so the printed sums depend
# on which worker ran which item: they differ from the serial ones, as the guide explains.
from dtm_executor import dtm

foo = [0]

def bar(n):
    foo[0] += n
    return foo[0]

def main():
    listNbr = range(30)
    results = dtm.map(bar, listNbr)
    print("Results : " + str(results))

dtm.start(main)

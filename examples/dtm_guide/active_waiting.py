# DTM guide, 6.5.6 "Asynchronous tasks and active waiting" (first program: a busy loop on
# ready()), with one change: the import line (was: from deap import dtm). The root task does not
# occupy a worker here, so the loop only wastes the root's time; it cannot half-deadlock.
from dtm_executor import dtm
def myTask(param):
    # [...] Long treatment
    return param+2

def main():
    listTasks = range(100)
    asyncReturn = dtm.map_async(myTask, listTasks)

    while not asyncReturn.ready():
        continue

    # Other instructions...

dtm.start(main)

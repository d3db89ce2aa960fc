# DTM guide, 6.5.6 "Asynchronous tasks and active waiting" (first program: a busy loop on
# ready()), with the import line changed (was: from deap import dtm) and the results printed. The
# root task does not occupy a worker here, so the loop only wastes the root's time; it cannot
# half-deadlock.
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
    print("%d results, the last: %d" % (len(asyncReturn.get()), asyncReturn.get()[-1]))

dtm.start(main)

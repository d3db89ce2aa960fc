# DTM guide, 6.5.6 "Asynchronous tasks and active waiting" (second program: the recommended
# wait()), completed with the first program's import, task and start (the guide shows only the
# new main), with the import line changed (was: from deap import dtm) and the results printed.
from dtm_executor import dtm
def myTask(param):
    # [...] Long treatment
    return param+2

def main():
    listTasks = range(100)
    asyncReturn = dtm.map_async(myTask, listTasks)

    asyncReturn.wait()  # or dtm.waitForAll()
    # [...]
    print("%d results, the last: %d" % (len(asyncReturn.get()), asyncReturn.get()[-1]))

dtm.start(main)

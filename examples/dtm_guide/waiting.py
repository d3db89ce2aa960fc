# DTM guide, 6.5.6 "Asynchronous tasks and active waiting" (second program: the recommended
# wait()), completed with the first program's import, task and start (the guide shows only the
# new main), with one change: the import line (was: from deap import dtm).
from dtm_executor import dtm
def myTask(param):
    # [...] Long treatment
    return param+2

def main():
    listTasks = range(100)
    asyncReturn = dtm.map_async(myTask, listTasks)

    asyncReturn.wait()  # or dtm.waitForAll()
    # [...]

dtm.start(main)

# DTM guide, 6.5.1 "Isolation per worker" (second program: a global log file), with the import
# line changed (was: from deap import dtm). The guide's listing has two slips that fail under DTM
# as well: it passes `listNBr` for `listNbr`, and calls `dtm.start()` without the target; both are
# corrected here. Every worker process opens (and truncates) 'myLogFile' itself, so what ends up
# in it is unpredictable: the pitfall the guide warns about. Added: main waits for its two maps and
# says how many tasks ran, and the program removes 'myLogFile' at the end (it is only a demo).
import os

from dtm_executor import dtm

logfile = open('myLogFile', 'w+')

def task1(args):
    # [...]
    logfile.write("Log task 1")
    # [...]
def task2(args):
    # [...]
    logfile.write("Log task 2")
    # [...]

def main():
    listNbr = range(100)
    statusTask1 = dtm.map_async(task1, listNbr)
    statusTask2 = dtm.map_async(task2, listNbr)
    # [...]
    dtm.waitAll()
    print("%d tasks wrote to their worker's myLogFile" % (len(statusTask1.get()) + len(statusTask2.get())))

dtm.start(main)
if __name__ == "__main__":  # not where workers import this file: the run is over here
    logfile.close()
    os.remove('myLogFile')

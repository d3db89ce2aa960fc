# DTM guide, 6.5.2 "Exceptions", as a program (the guide describes the behaviour without a
# listing); written for `from deap import dtm`, with that line changed. A task's exception is
# raised in its parent: at the call for apply/map, at get() for apply_async/map_async, whose
# successful() is then False. DTM logged each one on stderr when it was caught; dtm_executor logs
# it at DEBUG only (logger "dtm_executor"), since the parent gets it. An exception of the root task
# stops the run and is thrown by dtm.start().
from dtm_executor import dtm

def check(x):
    if x == 3:
        raise ValueError("bad item %d" % x)
    return x

def main():
    try:
        dtm.apply(check, 3)
    except ValueError as e:
        print("apply raised: " + str(e))
    try:
        dtm.map(check, range(10))
    except ValueError as e:
        print("map raised: " + str(e))
    asyncReturn = dtm.map_async(check, range(10))
    asyncReturn.wait()
    print("successful: " + str(asyncReturn.successful()))
    try:
        asyncReturn.get()
    except ValueError as e:
        print("get raised: " + str(e))
    print("good map: " + str(dtm.map(check, [1, 2])))
    raise RuntimeError("the root task failed")

dtm.start(main)

# DTM guide, 6.4.2 "Launch DTM with the pure-TCP backend", with one change: the import line (was:
# from deap import dtm). Launched as the guide says, `python tcp_localhost.py
# --dtmTCPhosts=myHostFile`; with only 'localhost' in the hostfile, all workers run locally.
from dtm_executor import dtm

dtm.setOptions(communicationManager="deap.dtm.commManagerTCP")

def op(x):
    return x + 1./x     # Or any operation

def main():
    nbrs = range(1, 1000)
    results = dtm.map(op, nbrs)
    print("%d results" % len(results))

dtm.start(main)

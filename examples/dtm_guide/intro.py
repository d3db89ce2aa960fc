# DTM guide, 6.2 "Introductory example", with one change: the import line
# (was: from deap import dtm). Run it with `python intro.py`: local worker processes, one per CPU.
from dtm_executor import dtm

def op(x):
    return x + 1./x     # Or any operation

def main():
    nbrs = range(1, 1000)
    results = dtm.map(op, nbrs)

dtm.start(main)

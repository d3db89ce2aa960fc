# DTM guide, 6.2 "Introductory example", with the import line changed (was: from deap import
# dtm) and a last line that prints what was computed. Run it with `python intro.py`: local worker
# processes, one per CPU.
from dtm_executor import dtm

def op(x):
    return x + 1./x     # Or any operation

def main():
    nbrs = range(1, 1000)
    results = dtm.map(op, nbrs)
    print("%d results, from %.3f to %.3f" % (len(results), results[0], results[-1]))

dtm.start(main)

"""The DTM guide's introductory example, on a `DTMExecutor` of local worker processes.

The sequential program is ``results = map(op, range(1, 1000))``; the parallel one only swaps in
the executor's ``map``. Run it with ``python examples/intro_map.py``.
"""

from __future__ import annotations

from dtm_executor import DTMExecutor


def op(x: int) -> float:
    return x + 1.0 / x  # or any operation


def main() -> None:
    nbrs = range(1, 1000)
    with DTMExecutor() as ex:
        results = list(ex.map(op, nbrs))
    assert results == list(map(op, nbrs))
    print(f"{len(results)} results, first {results[0]}, last {results[-1]:.6f}")


if __name__ == "__main__":  # workers import this module: start executors under this guard
    main()

"""``Executor.map(..., buffersize=N)`` with Python 3.14's semantics on every supported Python
(at most N results ahead of the consumer), and ``starmap`` as in mpi4py.futures."""

from __future__ import annotations

import itertools
import time
from typing import Iterator

import pytest

from dtm_executor import DTMExecutor

pytestmark = pytest.mark.timeout(120)


def sq(x):
    return x * x


def fail_on_5(x):
    if x == 5:
        raise ValueError("five")
    return x


def nested_starmap(n):
    ex = DTMExecutor()  # inside a task: the worker's executor
    return list(ex.starmap(pow, ((i, 2) for i in range(n)), buffersize=2))


class Counting:
    """An input that counts what the map has read from it."""

    def __init__(self, n: int | None = None) -> None:
        self.n = n
        self.read = 0

    def __iter__(self) -> Iterator[int]:
        for i in itertools.count() if self.n is None else range(self.n):
            self.read += 1
            yield i


@pytest.mark.parametrize("bad", ["foo", 2.0, None.__class__])
def test_buffersize_type(ex2, bad):
    with pytest.raises(TypeError, match="^buffersize must be an integer or None$"):
        ex2.map(str, range(4), buffersize=bad)


@pytest.mark.parametrize("bad", [0, -1])
def test_buffersize_value(ex2, bad):
    with pytest.raises(ValueError, match=r"^buffersize must be None or > 0$"):
        ex2.map(str, range(4), buffersize=bad)


@pytest.mark.parametrize("buffersize", [1, 2, 4, 8])
def test_buffersize_results(ex2, buffersize):
    # CPython's own checks (Lib/test/test_concurrent_futures/executor.py)
    assert list(ex2.map(str, range(4), buffersize=buffersize)) == ["0", "1", "2", "3"]
    assert list(ex2.map(pow, range(4), range(4), buffersize=buffersize)) == [1, 1, 4, 27]


@pytest.mark.parametrize("buffersize, chunksize", [(1, None), (3, None), (7, None), (3, 5), (16, 2)])
def test_at_most_buffersize_results_ahead_of_the_consumer(ex2, buffersize, chunksize):
    src = Counting(60)
    it = ex2.map(sq, src, buffersize=buffersize, chunksize=chunksize)
    assert 1 <= src.read <= buffersize  # the map starts at the call, within the buffer
    got = []
    for k, value in enumerate(it, 1):
        got.append(value)
        assert src.read - k <= buffersize, (k, src.read)
        if k % 7 == 0:
            time.sleep(0.02)  # let the workers run ahead if they could
    assert got == [i * i for i in range(60)] and src.read == 60


def test_buffersize_with_an_endless_input(ex2):
    src = Counting()
    it = ex2.map(sq, src, buffersize=4)
    assert [next(it) for _ in range(25)] == [i * i for i in range(25)]
    it.close()
    assert src.read <= 25 + 4


def test_buffersize_failure_at_its_item(ex2):
    it = ex2.map(fail_on_5, range(20), buffersize=3)
    assert [next(it) for _ in range(5)] == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="five"):
        next(it)


def test_starmap(ex2):
    assert list(ex2.starmap(pow, [(2, 3), (3, 2), [4, 1]])) == [8, 9, 4]
    pairs = ((i, i + 1) for i in range(50))  # lazily read, like map
    assert list(ex2.starmap(divmod, pairs, chunksize=4)) == [divmod(i, i + 1) for i in range(50)]
    assert list(ex2.starmap(pow, [])) == []
    src = Counting(40)
    it = ex2.starmap(pow, ((i, 2) for i in src), buffersize=3)
    for k, value in enumerate(it, 1):
        assert value == (k - 1) ** 2 and src.read - k <= 3
    assert ex2.submit(nested_starmap, 10).result(timeout=60) == [i * i for i in range(10)]
    with pytest.raises(TypeError):
        list(ex2.starmap(pow, [(1, 2, 3, 4)]))

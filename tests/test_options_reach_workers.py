"""Options rank 0 takes reach every rank that acts on them: ``task_granularity`` sizes the chunks
of maps made inside tasks, on workers (set at creation, or later with ``setOptions``)."""

from __future__ import annotations

import pytest

from dtm_executor import DTMExecutor, current_executor

pytestmark = pytest.mark.timeout(120)


def chunks_of_inner_map(n: int) -> float:
    """The task granularity that maps inside this task use (it sizes their chunks)."""
    return current_executor()._granularity  # type: ignore[attr-defined]


@pytest.mark.parametrize("transport", [{}, {"transport": "tcp", "hosts": ["localhost slots=2"]}],
                         ids=["local", "tcp"])
def test_task_granularity_reaches_the_workers(transport) -> None:
    with DTMExecutor(2, task_granularity=0.25, **transport) as ex:
        assert {ex.submit(chunks_of_inner_map, i).result(timeout=60) for i in range(6)} == {0.25}
        ex.setOptions(taskGranularity=0.5)
        assert {ex.submit(chunks_of_inner_map, i).result(timeout=60) for i in range(6)} == {0.5}

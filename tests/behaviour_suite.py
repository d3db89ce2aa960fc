"""The behaviour suite as pytest classes, one per transport, in the style of CPython's
``create_executor_tests`` (Lib/test/test_concurrent_futures/util.py): `BehaviourMixin` has one
test per scenario of tests/executor_scenarios.py; `create_executor_tests` crosses it with a mixin
per transport (its name, and how to lose one of its workers). Not a test module itself."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any, Callable

import pytest

import executor_scenarios
from dtm_executor import DTMExecutor


def kill_worker_process(ex: DTMExecutor, rank: int) -> None:
    """Lose worker ``rank`` of a transport whose pool keeps its processes in ``procs``."""
    os.kill(ex._pool.procs[rank].pid, signal.SIGKILL)


class BehaviourMixin:
    """One test per scenario; the transport mixin sets ``transport`` and ``lose``."""

    transport: str
    lose: Callable[[DTMExecutor, int], None] | None = None

    @pytest.fixture
    def ctx(self, tmp_path: Path) -> executor_scenarios.Context:
        lose = type(self).__dict__.get("lose") or getattr(type(self), "lose", None)
        return executor_scenarios.Context(self.transport, tmp_path, lose=lose)


def _test_of(fn: Callable[[executor_scenarios.Context], None]) -> Callable[..., None]:
    def test(self: Any, ctx: executor_scenarios.Context) -> None:
        fn(ctx)

    test.__doc__ = fn.__doc__
    return test


for _name, _fn in executor_scenarios.SCENARIOS.items():
    setattr(BehaviourMixin, f"test_{_name}", _test_of(_fn))


def create_executor_tests(namespace: dict[str, Any], mixin: type, executor_mixins: tuple[type, ...],
                          marks: tuple[Any, ...] = ()) -> None:
    """Add to ``namespace`` a test class per transport mixin: ``Test<Transport><Mixin>``."""
    for tm in executor_mixins:
        name = "Test" + tm.__name__.replace("Mixin", "") + mixin.__name__.replace("Mixin", "")
        cls = type(name, (tm, mixin), {"__module__": namespace["__name__"]})
        for m in marks:
            cls = m(cls)
        namespace[name] = cls

"""The run's own errors, public as `dtm_executor.BrokenDTMExecutor` and `WorkerLostError`.

A leaf: imports only the standard library, so that any layer may raise them."""

from __future__ import annotations

from concurrent.futures import BrokenExecutor


class BrokenDTMExecutor(BrokenExecutor):
    """The executor cannot go on (a worker failed to start, or every worker is gone)."""


class WorkerLostError(Exception):
    """The worker running a task died, and the task had used up its ``max_retries``."""

"""dtm_executor: a distributed task manager as a `concurrent.futures.Executor`.

Tasks may submit subtasks and wait on them at any depth without deadlock; a task waiting on
its children lends its worker to other work. See README.md and docs/ for the tour.

An entry point (docs/design.md, "Layers"): the public names, imported from the layers below.
"""

from __future__ import annotations

from ._errors import BrokenDTMExecutor, WorkerLostError
from ._executor import DTMExecutor, current_executor
from ._serial import RemoteTraceback, SerializationError
from ._transports import register_transport
from ._transports.base import Transport
from ._transports.mpi import watch_rank_exit as _watch_rank_exit
from ._transports.worker import serve as serve_worker

_watch_rank_exit()  # under mpiexec: no rank may wait forever for one that ended (docs/mpi.md)

__all__ = [
    "BrokenDTMExecutor",
    "DTMExecutor",
    "RemoteTraceback",
    "SerializationError",
    "Transport",
    "WorkerLostError",
    "current_executor",
    "register_transport",
    "serve_worker",
]

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    if name == "dtm":  # DEAP DTM's Control API: ``from dtm_executor import dtm``, loaded on use
        import importlib

        return importlib.import_module(".dtm", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

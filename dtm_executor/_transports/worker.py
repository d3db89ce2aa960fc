"""The one worker start-up, whatever the transport: read the start message (`WorkerStart`),
import the user's main module and run the initializer (a failure goes to rank 0 as INITFAIL),
then serve tasks with a scheduler `Node` until rank 0 says stop or goes away.

Local, TCP and memory workers and MPI ranks (one session at a time) all start through `serve`.
Imports `base`, the scheduler and the leaves.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import sys
import threading
import traceback
from typing import Any, Callable, Iterable, Iterator, NoReturn, Sequence

from .. import _serial
from .._scheduler import Kind, Node
from .base import Buffer, Transport, WorkerStart

_booting = [False]


def booting() -> bool:
    """True while a worker imports the user's main module (no executor may start then)."""
    return _booting[0]


@contextlib.contextmanager
def importing_main() -> Iterator[None]:
    """While a worker process imports the user's main module (and runs the initializer): a
    ``DTMExecutor()`` or ``dtm.start`` met there must not start a run of its own."""
    _booting[0] = True
    try:
        yield
    finally:
        _booting[0] = False


def initfail(text: str) -> list[bytes]:
    """The message a worker that cannot start sends rank 0 (the executor is then broken)."""
    return [pickle.dumps((int(Kind.INITFAIL), text), 5)]


def initialize(prep: dict[str, Any] | None, init_blob: Buffer, *, in_process: bool = False) -> str | None:
    """Import the user's main module (``prep``: multiprocessing's spawn data) and run the
    initializer; the traceback as text if either failed, else None."""
    try:
        with contextlib.nullcontext() if in_process else importing_main():
            if prep is not None:
                import multiprocessing.spawn as mpspawn

                mpspawn.prepare(prep)
            if not in_process:
                _serial.refresh_main_policy()
            initializer, initargs = pickle.loads(init_blob)
            if initializer is not None:
                initializer(*initargs)
    except BaseException:  # noqa: BLE001 - reported to rank 0, then this worker ends
        return traceback.format_exc()
    return None


def make_node(transport: Transport, options: dict[str, Any], workers: Iterable[int]) -> Node:
    """The scheduler of a worker rank (no hub), as rank 0's options say."""
    node = Node(transport, hub=False, worker=True, workers=list(workers),
                         max_threads=options.get("max_threads", 16))
    node.max_retries = options.get("max_retries", node.max_retries)
    node.task_granularity = options.get("task_granularity")
    if options.get("trace"):
        node.trace = []
    return node


def serve(
    frames: Sequence[Buffer],
    make_transport: Callable[[int, int], Transport],
    *,
    where: str = "",
    in_process: bool = False,
) -> None:
    """Serve as a worker (published as ``dtm_executor.serve_worker``, for transports added with
    `register_transport`): ``frames`` is the start message the pool handed this worker
    (``start.frames(rank, size)`` in the pool factory), ``make_transport(rank, size)`` returns
    this worker's end of the `Transport`. It imports the user's main module and runs the
    initializer (a failure is reported to rank 0, which then breaks the executor), then runs
    tasks until rank 0 says stop or goes away.

    In a worker process of its own it never returns: the process exits then, at once, whatever
    task threads still run. ``in_process=True``: for workers that share a process (threads, as
    with the memory transport; an MPI rank's session), which neither import the main module
    again nor exit; it returns then. ``where`` starts the text of a start-up failure (the host).
    """
    rank, size, prep, options, init_blob = WorkerStart.decode(frames)
    transport = make_transport(rank, size)
    failure = initialize(prep, init_blob, in_process=in_process)
    if failure is not None:
        try:
            transport.send(0, initfail(where + failure))
        except Exception:  # noqa: BLE001 - rank 0 is gone: nobody to tell
            pass
        if not in_process:
            exit_now(1)
        transport.close()
        return
    if not in_process:
        configure_process()
    node = make_node(transport, options, options.get("workers") or range(1, size))
    if in_process:
        node.on_lost = lambda src: node.close()  # rank 0 is gone: stop serving
        node.start(comm_in_thread=False)
        node.comm_loop()  # returns at SHUTDOWN (after reporting STOPPED to rank 0)
        node.flush_sends(2.0)
        node.close()
        transport.close()
        return

    def stop() -> None:
        node.flush_sends(2.0)
        exit_now(0)

    node.on_stop = stop
    node.on_lost = lambda src: exit_now(0)  # rank 0 is gone: nobody wants our results
    node.start(comm_in_thread=False)
    node.comm_loop()
    exit_now(0)


def configure_process() -> None:
    """For a process that runs tasks: a responsive communication thread, deep recursion."""
    sys.setswitchinterval(0.0005)  # the communication thread must not wait 5 ms for the GIL
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 50_000))
    threading.stack_size(64 << 20)  # deep inline recursion of nested tasks


def exit_now(code: int) -> NoReturn:
    """End a worker process at once (task threads may still run), its output flushed."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001
            pass
    logging.shutdown()
    os._exit(code)

"""The scheduler's vocabulary: message kinds, task and hub states, and the records inside messages.

A leaf (imports nothing from the package). On the wire everything stays plain ints and tuples:
an IntEnum or NamedTuple *instance* would be pickled by class reference, bigger and slower. So
senders write ``int(Kind.X)`` and the tuple forms built here or by `Task.wire_desc`; receivers
compare ints with the enums (``kind == Kind.TASKS`` holds for the int) and read records under
their field names: with `read_desc`..., or, where it runs for every task, by unpacking into
variables of those names (tests/test_scheduler_protocol.py checks both).
"""

from __future__ import annotations

import functools
from enum import IntEnum
from typing import Any, Callable, NamedTuple


class Kind(IntEnum):
    """Message kinds. Frame 0 of a message is the pickled tuple ``(int(kind), *fields)``; frames
    1.. are pickle-5 out-of-band buffers (those of the tasks or results it carries, in order)."""

    TASKS = 1  #: (descs, from_hub): `TaskDesc` tuples to run here; from the hub, or a steal's loot
    RESULTS = 2  #: (entries,): `ResultEntry` tuples of tasks the receiver owns
    REQ = 3  #: (want, idle, seen): a worker asks the hub for work; seen = hub dispatches received
    STEAL = 4  #: (thief,): the hub asks a busy worker to send work straight to ``thief``
    NOWORK = 5  #: (thief,): the victim of a STEAL had nothing for ``thief``
    HAVEWORK = 6  #: (): a worker that said NOWORK has work again
    SHUTDOWN = 7  #: (): stop (workers answer STOPPED)
    INITFAIL = 8  #: (traceback,): a worker could not start
    STOPPED = 9  #: (stats, trace): a stopping worker's report
    LOST = 10  #: (rank, who): rank 0 tells every rank that ``rank`` died
    MOVED = 11  #: (entries,): `MovedEntry` tuples: tasks of the receiver this rank handed on
    START = 12  #: (tid, attempt): a task that has outlived a worker is about to run here
    ACK = 13  #: (tid,): the owner of a starting task knows where it runs
    JOIN = 14  #: (rank,): a replacement worker joined the run
    OPTIONS = 15  #: (options,): rank 0's run options changed (``task_granularity``)


class TaskState(IntEnum):
    """Where a task stands in its worker's queues."""

    QUEUED = 0  #: in ``ready`` or ``inbox``: any thread may run it, a thief may take it
    CLAIMED = 1  #: a thread took it (to run, or withdrawn to cancel); left in ``ready``: a tombstone
    GONE = 2  #: left this worker (stolen) or dropped (its owner died)


class TaskKind(IntEnum):
    CALL = 0  #: ``fn(*args, **kwargs)``
    CHUNK = 1  #: a map chunk: ``fn`` over ``items`` (see `run_chunk`)


class Outcome(IntEnum):
    """How a task ended, in `ResultEntry.code`."""

    RAISED = 0  #: data is a pickled exception with its traceback (`_serial.pack_exception`)
    RETURNED = 1  #: data is the pickled value


class HubState(IntEnum):
    """A worker as the hub sees it."""

    NONE = 0  #: served, or has not asked
    HUNGRY = 1  #: busy, asked to top up its inbox
    IDLE = 2  #: nothing to run: serve it from the queue or find it a victim to steal from
    STEALING = 3  #: a STEAL for it is out


class TaskDesc(NamedTuple):
    """A task travelling to the rank that will run it (in TASKS). Built only by
    `Task.wire_desc`, read with `read_desc`; its ``nbufs`` buffers follow in the message's
    frames."""

    owner: int  #: the rank holding its future
    tid: int  #: its id on the owner
    fid: Any  #: its function's id (a digest of the pickled function)
    fnblob: bytes | None  #: the pickled function; None when the receiver has it from this sender
    blob: Any  #: the pickled (args, kwargs), or ((items, star), kwargs) for a chunk
    nbufs: int
    depth: int  #: 0 for top-level tasks
    kind: int  #: a `TaskKind`
    parent: tuple[int, int] | None  #: (owner, tid) of the task that submitted it
    attempt: int  #: times its owner re-queued it after a loss
    hop: int  #: hand-overs within this attempt (the owner keeps the newest MOVED)


class ResultEntry(NamedTuple):
    """How a task ended, on its way to its owner (in RESULTS)."""

    tid: int
    code: int  #: an `Outcome`
    data: Any  #: the pickled value or exception
    nbufs: int  #: its out-of-band buffers, which follow in the message's frames
    dur: float  #: seconds the task ran

    @staticmethod
    def wire(tid: int, code: int, data: Any, nbufs: int, dur: float) -> tuple[Any, ...]:
        return (tid, code, data, nbufs, dur)


class MovedEntry(NamedTuple):
    """A task its owner must look for elsewhere (in MOVED): see "Where every task is" in
    docs/design.md."""

    tid: int
    dest: int  #: the rank it went to
    attempt: int  #: the attempt this news is about (news of older attempts is ignored)
    hop: int

    @staticmethod
    def wire(tid: int, dest: int, attempt: int, hop: int) -> tuple[Any, ...]:
        return (tid, dest, attempt, hop)


# Receivers name the fields of a wire tuple with these: ``Record._make`` without its length check,
# called from C (they run for every task and result received).
read_desc: Callable[[tuple[Any, ...]], TaskDesc] = functools.partial(tuple.__new__, TaskDesc)
read_result: Callable[[tuple[Any, ...]], ResultEntry] = functools.partial(tuple.__new__, ResultEntry)
read_moved: Callable[[tuple[Any, ...]], MovedEntry] = functools.partial(tuple.__new__, MovedEntry)

"""The scheduler's wire stays plain, and its named records say what is on it.

Messages are pickled one by one, so an enum or NamedTuple *instance* inside one would be written
as a class reference (bigger, slower to pickle and unpickle). These tests run the real scheduler
(a hub node and two worker nodes in this process, frames pickled and passed through queues) and
look at every message frame."""

from __future__ import annotations

import ast
import collections
import inspect
import pickle
import pickletools
import textwrap
import threading
from concurrent.futures import wait
from typing import Any

import pytest

from dtm_executor._futures import executing_worker
from dtm_executor._scheduler import Kind, Node, TaskKind, Worker
from dtm_executor._scheduler.protocol import MovedEntry, ResultEntry, TaskDesc, read_desc, read_moved, read_result
from dtm_executor._scheduler.task import Task

pytestmark = pytest.mark.timeout(120)

#: pickle opcodes that refer to a class or build an object: none may appear in a message frame
_OBJECT_OPS = {"GLOBAL", "STACK_GLOBAL", "REDUCE", "NEWOBJ", "NEWOBJ_EX", "INST", "OBJ", "BUILD"}


class _Queues:
    """Frame lists between the ranks of this process; every frame 0 sent is recorded."""

    def __init__(self, size: int) -> None:
        self.boxes = [collections.deque() for _ in range(size)]
        self.cvs = [threading.Condition() for _ in range(size)]
        self.woken = [False] * size
        self.sent: list[bytes] = []


class _Link:
    def __init__(self, rank: int, queues: _Queues) -> None:
        self._q = queues
        self._rank = rank

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def size(self) -> int:
        return len(self._q.boxes)

    def send(self, dest: int, frames: Any) -> None:
        frames = [bytes(f) for f in frames]
        self._q.sent.append(frames[0])
        with self._q.cvs[dest]:
            self._q.boxes[dest].append((self._rank, frames))
            self._q.cvs[dest].notify()

    def recv(self, timeout: float | None = None) -> Any:
        cv, box = self._q.cvs[self._rank], self._q.boxes[self._rank]
        with cv:
            if not box and not self._q.woken[self._rank]:
                cv.wait(timeout)
            self._q.woken[self._rank] = False
            return box.popleft() if box else None

    def wakeup(self) -> None:
        with self._q.cvs[self._rank]:
            self._q.woken[self._rank] = True
            self._q.cvs[self._rank].notify()


def _inc(x: int) -> int:
    return x + 1


def _fails(x: int) -> int:
    raise ValueError(f"no {x}")


def _parent(n: int) -> int:
    w = executing_worker()
    kids = [w.submit(_inc, (i,), {}) for i in range(n)]
    return sum(k.result() for k in kids)


@pytest.fixture
def nodes():
    q = _Queues(3)
    hub = Node(_Link(0, q), hub=True, worker=False, workers=[1, 2])
    workers = [Node(_Link(r, q), hub=False, worker=True, workers=[1, 2]) for r in (1, 2)]
    for n in (hub, *workers):
        n.start()
    yield hub, q
    for n in (hub, *workers):
        n.close()


def _submit(hub: Node, fn: Any, payload: Any, kind: TaskKind = TaskKind.CALL) -> Any:
    assert hub.hub is not None
    task, fut = hub.hub.make_task(fn, payload, kind)
    hub.hub.submit(task)
    return fut


def test_every_message_frame_is_plain_values(nodes):
    hub, q = nodes
    futs = [_submit(hub, _inc, ((i,), {})) for i in range(200)]
    futs += [_submit(hub, _parent, ((50,), {})) for _ in range(20)]
    bad = _submit(hub, _fails, ((7,), {}))
    chunk = _submit(hub, _inc, (([1, 2, 3], False), {}), TaskKind.CHUNK)
    done, _ = wait([*futs, bad, chunk], timeout=60)
    assert len(done) == len(futs) + 2
    assert [f.result() for f in futs[:200]] == list(range(1, 201))
    assert all(f.result() == sum(range(1, 51)) for f in futs[200:])
    with pytest.raises(ValueError, match="no 7"):
        bad.result()
    assert chunk.result() == ([2, 3, 4], None)

    kinds = set()
    for frame in list(q.sent):
        ops = {op.name for op, _, _ in pickletools.genops(frame)}
        assert not ops & _OBJECT_OPS, (pickle.loads(frame), ops & _OBJECT_OPS)
        msg = pickle.loads(frame)
        assert type(msg) is tuple and type(msg[0]) is int
        kinds.add(Kind(msg[0]))
        if msg[0] == Kind.TASKS:
            for raw in msg[1]:
                d = TaskDesc._make(raw)
                assert type(d.kind) is int and d.kind in (TaskKind.CALL, TaskKind.CHUNK)
        elif msg[0] == Kind.RESULTS:
            assert all(len(raw) == len(ResultEntry._fields) for raw in msg[1])
        elif msg[0] == Kind.MOVED:
            assert all(len(raw) == len(MovedEntry._fields) for raw in msg[1])
    assert {Kind.TASKS, Kind.RESULTS, Kind.REQ} <= kinds


def test_task_descriptor_names_the_task_fields():
    t = Task(owner=3, tid=41, kind=TaskKind.CHUNK, depth=2)
    t.fid, t.blob, t.bufs, t.parent = b"fid", b"blob", [b"a", b"b"], (3, 40)
    raw = t.wire_desc(b"fn", 5, 6)
    assert type(raw) is tuple and type(raw[TaskDesc._fields.index("kind")]) is int
    d = TaskDesc._make(raw)
    assert d == TaskDesc(owner=3, tid=41, fid=b"fid", fnblob=b"fn", blob=b"blob", nbufs=2, depth=2,
                         kind=TaskKind.CHUNK, parent=(3, 40), attempt=5, hop=6)
    assert read_desc(raw) == d


def test_result_and_moved_entries_are_built_in_field_order():
    assert read_result(ResultEntry.wire(1, 0, b"d", 2, 0.5)) == ResultEntry(
        tid=1, code=0, data=b"d", nbufs=2, dur=0.5)
    assert read_moved(MovedEntry.wire(1, 2, 3, 4)) == MovedEntry(tid=1, dest=2, attempt=3, hop=4)


def _unpacked_names(func: Any) -> list[list[str]]:
    """The names of every ``for a, b, ... in`` loop target in ``func``."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(func)))
    return [[e.id for e in node.target.elts] for node in ast.walk(tree)
            if isinstance(node, ast.For) and isinstance(node.target, ast.Tuple)
            and all(isinstance(e, ast.Name) for e in node.target.elts)]


def test_hot_receivers_unpack_the_records_under_their_field_names():
    """The receivers of every task and result unpack by position (cheaper than attributes), into
    variables named after the record's fields, in its order."""
    assert list(TaskDesc._fields) in _unpacked_names(Worker.on_tasks)
    assert list(ResultEntry._fields) in _unpacked_names(Node.on_results)

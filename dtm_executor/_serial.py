"""Serialization: the fast C pickler first, cloudpickle for what it cannot do.

Module-level functions (including those of the user's ``__main__`` script, which workers import
the way multiprocessing's *spawn* does) travel by reference, so module globals keep their
per-worker meaning. What workers could not find by reference travels by value through cloudpickle:
lambdas, closures, functions defined inside functions, every function of a ``__main__`` that
workers cannot import (interactive, ``python -c``, a program read from stdin), and the functions
and classes defined under the script's ``if __name__ == "__main__":`` (workers import the script
without running that block). Protocol 5 keeps large buffers out of band.

A leaf: imports no other module of the package.
"""

from __future__ import annotations

import ast
import collections
import functools
import hashlib
import io
import os
import pickle
import pickletools
import sys
import threading
import types
import weakref
from typing import Any, Callable

import cloudpickle

PROTOCOL = 5


class SerializationError(pickle.PicklingError):
    """A task's function, argument or result could not be serialized (or deserialized)."""


def _main_travels_by_reference() -> bool:
    """Whether workers can import ``__main__`` (as ``__mp_main__``): a module run by name, or a
    script file. Not an interactive session, ``python -c``, nor a program read from stdin (its
    ``__file__`` is ``"<stdin>"``, no file at all)."""
    main = sys.modules.get("__main__")
    if getattr(getattr(main, "__spec__", None), "name", None) not in (None, "__main__"):
        return True
    path = getattr(main, "__file__", None)
    return isinstance(path, str) and os.path.isfile(path)


class _ByValue(Exception):
    """Raised while pickling by reference: this object does not exist on the workers."""


class _GuardPickler(pickle.Pickler):
    """The C pickler, refusing ``__main__`` functions and classes defined in the main block.

    Used only when the script defines some (``_guard_names()`` not empty): ``reducer_override``
    is a Python call for every object that is not a builtin container or atom."""

    def reducer_override(self, obj: Any) -> Any:
        if (isinstance(obj, (types.FunctionType, type)) and getattr(obj, "__module__", None) == "__main__"
                and getattr(obj, "__qualname__", "").split(".", 1)[0] in _guard_names()):
            raise _ByValue(obj.__qualname__)
        return NotImplemented


def _c_pickle(obj: Any, buffer_callback: Callable[[pickle.PickleBuffer], Any] | None = None) -> bytes:
    if _guard_names():
        f = io.BytesIO()
        _GuardPickler(f, PROTOCOL, buffer_callback=buffer_callback).dump(obj)
        return f.getvalue()
    return pickle.dumps(obj, PROTOCOL, buffer_callback=buffer_callback)


def dumps(obj: Any) -> tuple[bytes, list[pickle.PickleBuffer]]:
    """Pickle ``obj`` to (bytes, out-of-band buffers)."""
    bufs: list[pickle.PickleBuffer] = []
    if _BY_REFERENCE_OK[0]:
        try:
            return _c_pickle(obj, bufs.append), bufs
        except Exception:
            bufs = []
    return cloudpickle.dumps(obj, PROTOCOL, buffer_callback=bufs.append), bufs


def dumps_inband(obj: Any) -> bytes:
    """Like `dumps`, with everything in one bytes object."""
    if _BY_REFERENCE_OK[0]:
        try:
            return _c_pickle(obj)
        except Exception:
            pass
    return cloudpickle.dumps(obj, PROTOCOL)


def loads(data: Any, buffers: Any = ()) -> Any:
    return pickle.loads(data, buffers=buffers)


# Computed once per process: an interactive ``__main__`` cannot be imported by workers, so its
# functions must go by value (cloudpickle does that for ``__main__``).
_BY_REFERENCE_OK = [True]
#: names defined under the main script's ``if __name__ ...`` blocks (None: not computed yet)
_GUARD: list[frozenset[str] | None] = [None]


def refresh_main_policy() -> None:
    _BY_REFERENCE_OK[0] = _main_travels_by_reference()
    _GUARD[0] = None


def main_by_value() -> None:
    """From now on the main module's functions travel by value (workers will not import it)."""
    _BY_REFERENCE_OK[0] = False


refresh_main_policy()


def _guard_names() -> frozenset[str]:
    names = _GUARD[0]
    if names is None:
        names = frozenset()
        if _BY_REFERENCE_OK[0]:
            path = getattr(sys.modules.get("__main__"), "__file__", None)
            if isinstance(path, str):
                names = _guard_names_of(path)
        _GUARD[0] = names
    return names


def _guard_names_of(path: str) -> frozenset[str]:
    """Functions and classes a script defines under a top-level ``if`` on ``__name__`` (either
    branch, inside any statements but not inside function or class bodies): workers import the
    script without running that block, so these do not exist there."""
    try:
        with open(path, "rb") as f:
            tree = ast.parse(f.read(), path)
    except (OSError, SyntaxError, ValueError):
        return frozenset()  # not Python source we can read: keep the by-reference default
    names: set[str] = set()

    def defs(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(child.name)
            else:
                defs(child)

    def find(stmts: list[ast.stmt]) -> None:
        for st in stmts:
            if isinstance(st, ast.If) and any(
                isinstance(n, ast.Name) and n.id == "__name__" for n in ast.walk(st.test)
            ):
                for s in st.body + st.orelse:
                    if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                        names.add(s.name)
                    else:
                        defs(s)
            elif isinstance(st, ast.If):
                find(st.orelse)  # an ``elif __name__ ...``

    find(tree.body)
    return frozenset(names)


def preparation_data(name: str) -> dict[str, Any]:
    """multiprocessing's spawn data for a worker, without its authkey; without the main script's
    path when workers cannot import it (``"<stdin>"`` is no file: its functions go by value)."""
    import multiprocessing.spawn as mpspawn

    prep = mpspawn.get_preparation_data(name)
    prep.pop("authkey", None)  # multiprocessing's key is not ours to hand out
    if not _main_travels_by_reference():
        prep.pop("init_main_from_path", None)
    return prep


def describe(obj: Any, limit: int = 80) -> str:
    try:
        text = repr(obj)
    except Exception:
        text = f"<{type(obj).__qualname__} object>"
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


def fn_name(fn: Any) -> str:
    """A task function's name for logs and statistics: one per definition, not per object."""
    if isinstance(fn, functools.partial):
        return f"partial({fn_name(fn.func)})"
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    mod = getattr(fn, "__module__", None)
    if not isinstance(name, str):  # a callable object: its class names it
        name = type(fn).__qualname__
        mod = type(fn).__module__
    if mod == "__mp_main__":  # the user's script, as imported on workers
        mod = "__main__"
    return f"{mod}.{name}" if mod and mod != "builtins" else str(name)


_STRING_OPS = frozenset({"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING",
                         "BINSTRING", "SHORT_BINSTRING"})


def pickled_name(blob: bytes | None) -> str | None:
    """The name of the function a pickle holds, read without unpickling it: for messages about
    a function that could not be unpickled. By reference, the global it names; by value
    (cloudpickle), the ``__module__`` and ``__qualname__`` it carries."""
    if not blob:
        return None
    import pickletools

    memo: dict[int, Any] = {}
    strings: list[Any] = []  # what each push left on top (a str, or None for anything else)
    found: dict[str, str] = {}
    first_global = None
    try:
        for op, arg, _pos in pickletools.genops(blob):
            name = op.name
            top: Any = None
            if name in _STRING_OPS:
                top = arg
            elif name == "MEMOIZE":
                memo[len(memo)] = strings[-1] if strings else None
                continue
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[int(arg or 0)] = strings[-1] if strings else None
                continue
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                top = memo.get(int(arg or 0))
            elif name == "STACK_GLOBAL" and first_global is None and len(strings) >= 2:
                if isinstance(strings[-2], str) and isinstance(strings[-1], str):
                    first_global = f"{strings[-2]}.{strings[-1]}"
            elif name == "GLOBAL" and first_global is None and isinstance(arg, str):
                first_global = arg.replace(" ", ".", 1)
            if isinstance(top, str) and strings and strings[-1] in ("__qualname__", "__module__"):
                found.setdefault(strings[-1], top)
            strings.append(top)
    except Exception:  # noqa: BLE001 - a truncated or odd pickle: whatever was found so far
        pass
    if "__qualname__" in found:
        mod = found.get("__module__")
        mod = "__main__" if mod == "__mp_main__" else mod
        return f"{mod}.{found['__qualname__']}" if mod and mod != "builtins" else found["__qualname__"]
    if first_global is not None and first_global.startswith("__mp_main__."):
        first_global = "__main__." + first_global[len("__mp_main__."):]
    return first_global


def explain_args_failure(task_label: str, args: tuple, kwargs: dict, exc: BaseException) -> SerializationError:
    """Find which argument cannot be pickled, so the error names it."""
    for i, a in enumerate(args):
        try:
            dumps(a)
        except Exception as e:  # noqa: BLE001 - any pickling failure is reported
            return SerializationError(
                f"cannot pickle positional argument {i} of {task_label}: {describe(a)} "
                f"({type(e).__name__}: {e})"
            )
    for k, a in kwargs.items():
        try:
            dumps(a)
        except Exception as e:  # noqa: BLE001
            return SerializationError(
                f"cannot pickle keyword argument {k!r} of {task_label}: {describe(a)} "
                f"({type(e).__name__}: {e})"
            )
    return SerializationError(f"cannot pickle the arguments of {task_label}: {type(exc).__name__}: {exc}")


#: Pickled functions bigger than this are never cached anywhere: they are sent with every task
#: (pickling them at each submit costs as much as sending them).
MAX_CACHED_FUNCTION = 1 << 20
#: Bytes of pickled functions one table may hold (each peer pair's tables, the unpickled objects).
TABLE_BYTES = 16 << 20

#: opcodes of a pickle that is nothing but a reference to a module attribute
_REFERENCE_OPS = frozenset({
    "PROTO", "FRAME", "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "MEMOIZE",
    "BINPUT", "LONG_BINPUT", "PUT", "STACK_GLOBAL", "GLOBAL", "STOP",
})


def _is_reference(data: bytes) -> bool:
    """True if ``data`` only names a module attribute (a module-level function, a class, a
    builtin): such a function is the same object whenever it is sent, so it may be cached by
    identity. Everything else (closures, partials, callable objects, bound methods) carries state
    that may change between calls."""
    if len(data) > 512 or not data.endswith(b"\x93\x94."):  # STACK_GLOBAL MEMOIZE STOP
        return False
    try:
        return all(op.name in _REFERENCE_OPS for op, _, _ in pickletools.genops(data))
    except Exception:  # noqa: BLE001 - not a pickle we understand: not a plain reference
        return False


def _pickle_function(fn: Any) -> tuple[bytes, bool]:
    """(in-band bytes, whether they are a plain by-reference pickle)."""
    if _BY_REFERENCE_OK[0]:
        try:
            data = _c_pickle(fn)
        except Exception:  # noqa: BLE001 - cloudpickle can do more
            pass
        else:
            return data, _is_reference(data)
    data = cloudpickle.dumps(fn, PROTOCOL)  # never a reference to ``__main__``: by value
    return data, _is_reference(data)


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


class _Lru:
    """An LRU bounded by entries and by bytes. Two copies fed the same operations in the same
    order evict the same entries (the sender and receiver sides of one peer pair rely on it)."""

    __slots__ = ("d", "cap", "budget", "nbytes")

    def __init__(self, cap: int, budget: int) -> None:
        self.d: collections.OrderedDict[Any, tuple[Any, int]] = collections.OrderedDict()
        self.cap = cap
        self.budget = budget
        self.nbytes = 0

    def get(self, key: Any) -> Any:
        hit = self.d.get(key)
        if hit is None:
            return None
        self.d.move_to_end(key)
        return hit[0]

    def put(self, key: Any, value: Any, size: int) -> None:
        old = self.d.pop(key, None)
        if old is not None:
            self.nbytes -= old[1]
        self.d[key] = (value, size)
        self.nbytes += size
        while len(self.d) > self.cap or (self.nbytes > self.budget and len(self.d) > 1):
            self.nbytes -= self.d.popitem(last=False)[1][1]


class FunctionCache:
    """Pickled functions: what was sent to each peer, what was received, the unpickled objects.

    A function's id (fid) is a digest of its pickled bytes, so only identical bytes are ever
    reused: what travels by value (closures, partials, callable objects, ``__main__`` functions
    that workers cannot import) is pickled again at each call and is as current as at that call;
    identical bytes are sent once per peer and unpickled once per process. Only a plain
    by-reference pickle (a module-level function) is cached by identity and pickled once.

    Sender and receiver keep one LRU per peer pair, bounded alike, and update them in the same
    (FIFO message) order, so a fid the sender emits without bytes is always resolvable. Every
    table is bounded by entries and bytes; functions bigger than `MAX_CACHED_FUNCTION` are never
    kept.
    """

    def __init__(self, rank: int, capacity: int = 1024, max_bytes: int = TABLE_BYTES) -> None:
        self._rank = rank
        self._cap = capacity
        self._budget = max_bytes
        self._big = min(MAX_CACHED_FUNCTION, max_bytes // 4)
        self._lock = threading.RLock()  # weakref callbacks may run inside a locked section
        self._by_id: collections.OrderedDict[int, tuple[weakref.ref[Any], bytes, bytes]] = (
            collections.OrderedDict()
        )
        self._sent: dict[int, _Lru] = {}
        self._recv: dict[int, _Lru] = {}
        self._objs = _Lru(4 * capacity, max_bytes)

    def pickle_fn(self, fn: Callable[..., Any]) -> tuple[bytes, bytes]:
        """Return (fid, bytes) for a local function, as it is now.

        By-reference entries hold the function weakly: a short-lived function's id() may be
        reused by another object, which must not get its bytes."""
        key = id(fn)
        with self._lock:
            hit = self._by_id.get(key)
            if hit is not None and hit[0]() is fn:
                self._by_id.move_to_end(key)
                return hit[1], hit[2]
        data, by_reference = _pickle_function(fn)
        fid = _digest(data)
        if by_reference:
            try:
                ref: weakref.ref[Any] = weakref.ref(fn, functools.partial(self._drop, key))
            except TypeError:
                return fid, data  # not weakly referenceable (a builtin): pickled each time
            with self._lock:
                self._by_id[key] = (ref, fid, data)
                if len(self._by_id) > self._cap:
                    self._by_id.popitem(last=False)
        return fid, data

    def _drop(self, key: int, ref: Any) -> None:
        with self._lock:
            hit = self._by_id.get(key)
            if hit is not None and hit[0] is ref:
                del self._by_id[key]

    def outgoing(self, dest: int, fid: bytes, data: bytes) -> bytes | None:
        """Bytes to include for ``fid`` in a message to ``dest`` (None if dest has them)."""
        if len(data) > self._big:
            return data
        sent = self._sent.get(dest)
        if sent is None:
            sent = self._sent[dest] = _Lru(self._cap, self._budget)
        if sent.get(fid) is not None:
            return None
        sent.put(fid, True, len(data))
        return data

    def incoming(self, src: int, fid: bytes, data: bytes | None) -> bytes:
        got = self._recv.get(src)
        if got is None:
            got = self._recv[src] = _Lru(self._cap, self._budget)
        if data is None:
            data = got.get(fid)
            if data is None:  # pragma: no cover - the peer tables went out of step: a bug
                raise SerializationError(f"rank {src} referred to a function this rank does not have")
            return data
        if len(data) <= self._big:
            got.put(fid, data, len(data))
        return data

    def function(self, fid: bytes, data: bytes) -> Any:
        with self._lock:
            fn = self._objs.get(fid)
        if fn is not None:
            return fn
        fn = loads(data)
        if len(data) <= self._big:
            with self._lock:
                self._objs.put(fid, fn, len(data))
        return fn

    def forget_peer(self, peer: int) -> None:
        self._sent.pop(peer, None)
        self._recv.pop(peer, None)

    def sizes(self) -> dict[str, int]:
        """Entries and bytes held in all tables (for tests and reports)."""
        tables = [*self._sent.values(), *self._recv.values(), self._objs]
        return {
            "entries": len(self._by_id) + sum(len(t.d) for t in tables),
            "bytes": sum(len(v[2]) for v in list(self._by_id.values())) + sum(t.nbytes for t in tables),
        }


class RemoteTraceback(Exception):
    """Carries a task's formatted traceback from the worker that ran it (set as ``__cause__``)."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


def _rebuild_exc(exc: BaseException, tb: str) -> BaseException:
    exc.__cause__ = RemoteTraceback(tb)
    return exc


def pack_exception(exc: BaseException, where: str) -> tuple[bytes, list[pickle.PickleBuffer]]:
    import traceback

    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    tb = f'\n"""\n{where}\n{tb}"""'
    try:
        data, bufs = dumps((exc, tb))
        # Unpicklable-on-arrival exceptions (custom __init__) are caught here, not at the owner.
        loads(data, bufs)
        return data, bufs
    except Exception:
        return pickle.dumps((_untravelled(exc), tb), PROTOCOL), []


def _untravelled(exc: BaseException) -> RuntimeError:
    """What an exception that cannot be pickled (or rebuilt) becomes when it travels."""
    return RuntimeError(f"{type(exc).__qualname__}: {describe(exc, 400)} (original exception could not be pickled)")


def unpack_exception(data: Any, bufs: Any) -> BaseException:
    exc, tb = loads(data, bufs)
    return _rebuild_exc(exc, tb)


# -- one rule for a task's outcome, wherever the task ran -------------------------------------------
#: results of these types always pickle: no need to try
_ATOMS = frozenset({type(None), bool, int, float, complex, str, bytes})
#: the last exception found to travel (a failing chain re-raises one exception at every level)
_travelled_exc: list[Any] = [None]


def as_if_moved(label: Callable[[], str], rank: int, chunk: bool, ok: bool, value: Any) -> tuple[bool, Any]:
    """A task's outcome as its owner would see it had the task run on another rank.

    Used where a result is handed over without pickling (rank 0's own top-level tasks under MPI,
    a nested child run by the rank that submitted it), so that a task behaves the same wherever it
    runs: a result that could not be pickled fails with `SerializationError`, an exception that
    could not be pickled or rebuilt becomes the same `RuntimeError`. Atoms skip the check; other
    values are pickled (big buffers out of band, not copied) and the bytes dropped."""
    if ok:
        if chunk:
            values, errs = value
            if errs:
                value = (values, [(i, _travelled(e)) for i, e in errs])
            probe: Any = values
        else:
            probe = value
        if type(probe) in _ATOMS:
            return ok, value
        try:
            dumps(probe)
        except Exception as e:  # noqa: BLE001 - the same failure as on another rank
            err = SerializationError(
                f"the result of {label()} could not be pickled on rank {rank}: "
                f"{describe(probe)} ({type(e).__name__}: {e})"
            )
            return False, err
        return ok, value
    return ok, _travelled(value)


def _travelled(exc: BaseException) -> BaseException:
    ref = _travelled_exc[0]
    if ref is not None and ref() is exc:
        return exc
    try:
        data, bufs = dumps(exc)
        loads(data, bufs)
    except Exception:  # noqa: BLE001
        sub = _untravelled(exc)
        sub.__cause__ = exc  # unlike on another rank, the original is at hand: keep it visible
        return sub
    try:
        _travelled_exc[0] = weakref.ref(exc)
    except TypeError:  # pragma: no cover - every exception is weakly referenceable
        pass
    return exc

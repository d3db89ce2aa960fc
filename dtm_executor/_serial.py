"""Serialization: the fast C pickler first, cloudpickle for what it cannot do.

Module-level functions (including those of the user's ``__main__`` script, which workers import
the way multiprocessing's *spawn* does) travel by reference, so module globals keep their
per-worker meaning. Lambdas, closures and functions defined inside functions cannot be pickled by
reference and go by value through cloudpickle. Protocol 5 keeps large buffers out of band.
"""

from __future__ import annotations

import collections
import pickle
import sys
import functools
import threading
import weakref
from typing import Any, Callable

import cloudpickle

PROTOCOL = 5


class SerializationError(pickle.PicklingError):
    """A task's function, argument or result could not be serialized (or deserialized)."""


def _main_travels_by_reference() -> bool:
    main = sys.modules.get("__main__")
    return bool(getattr(main, "__file__", None)) or getattr(
        getattr(main, "__spec__", None), "name", None
    ) not in (None, "__main__")


def dumps(obj: Any) -> tuple[bytes, list[pickle.PickleBuffer]]:
    """Pickle ``obj`` to (bytes, out-of-band buffers)."""
    bufs: list[pickle.PickleBuffer] = []
    if _BY_REFERENCE_OK[0]:
        try:
            return pickle.dumps(obj, PROTOCOL, buffer_callback=bufs.append), bufs
        except Exception:
            bufs = []
    return cloudpickle.dumps(obj, PROTOCOL, buffer_callback=bufs.append), bufs


def dumps_inband(obj: Any) -> bytes:
    """Like `dumps`, with everything in one bytes object."""
    if _BY_REFERENCE_OK[0]:
        try:
            return pickle.dumps(obj, PROTOCOL)
        except Exception:
            pass
    return cloudpickle.dumps(obj, PROTOCOL)


def loads(data: Any, buffers: Any = ()) -> Any:
    return pickle.loads(data, buffers=buffers)


# Computed once per process: an interactive ``__main__`` cannot be imported by workers, so its
# functions must go by value (cloudpickle does that for ``__main__``).
_BY_REFERENCE_OK = [True]


def refresh_main_policy() -> None:
    _BY_REFERENCE_OK[0] = _main_travels_by_reference()


refresh_main_policy()


def describe(obj: Any, limit: int = 80) -> str:
    try:
        text = repr(obj)
    except Exception:
        text = f"<{type(obj).__qualname__} object>"
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


def fn_name(fn: Any) -> str:
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    if name is None:
        return describe(fn, 40)
    mod = getattr(fn, "__module__", None)
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


class FunctionCache:
    """Pickled functions, each pickled once and sent once to each peer.

    Sender and receiver keep one LRU per peer pair of the same capacity and update them in the
    same (FIFO message) order, so a reference the sender emits is always resolvable. A closure's
    captured values are therefore those at its first use (as in Dask): a documented trade-off.
    """

    def __init__(self, rank: int, capacity: int = 1024) -> None:
        self._rank = rank
        self._cap = capacity
        self._lock = threading.RLock()  # weakref callbacks may run inside a locked section
        self._count = 0
        self._by_id: collections.OrderedDict[int, tuple[weakref.ref[Any], tuple[int, int], bytes]] = (
            collections.OrderedDict()
        )
        self._sent: dict[int, collections.OrderedDict[tuple[int, int], None]] = {}
        self._recv: dict[int, collections.OrderedDict[tuple[int, int], bytes]] = {}
        self._objs: collections.OrderedDict[tuple[int, int], Any] = collections.OrderedDict()

    def pickle_fn(self, fn: Callable[..., Any]) -> tuple[tuple[int, int], bytes]:
        """Return (fid, bytes) for a local function, pickling it on first use.

        Entries hold the function weakly: the cache must not keep a bound method's object (or a
        closure's captures) alive after the user dropped it.
        """
        key = id(fn)
        with self._lock:
            hit = self._by_id.get(key)
            if hit is not None and hit[0]() is fn:
                self._by_id.move_to_end(key)
                return hit[1], hit[2]
        data, bufs = dumps(fn)
        if bufs:  # a callable carrying big buffers: keep them in band, it is cached anyway
            data = cloudpickle.dumps(fn, PROTOCOL)
        with self._lock:
            self._count += 1
            fid = (self._rank, self._count)
            try:
                ref: weakref.ref[Any] = weakref.ref(fn, functools.partial(self._drop, key))
            except TypeError:
                return fid, data  # not weakly referenceable: not cached
            self._by_id[key] = (ref, fid, data)
            if len(self._by_id) > self._cap:
                self._by_id.popitem(last=False)
        return fid, data

    def _drop(self, key: int, ref: Any) -> None:
        with self._lock:
            hit = self._by_id.get(key)
            if hit is not None and hit[0] is ref:
                del self._by_id[key]

    def outgoing(self, dest: int, fid: tuple[int, int], data: bytes) -> bytes | None:
        """Bytes to include for ``fid`` in a message to ``dest`` (None if dest has it)."""
        sent = self._sent.setdefault(dest, collections.OrderedDict())
        if fid in sent:
            sent.move_to_end(fid)
            return None
        sent[fid] = None
        if len(sent) > self._cap:
            sent.popitem(last=False)
        return data

    def incoming(self, src: int, fid: tuple[int, int], data: bytes | None) -> bytes:
        got = self._recv.setdefault(src, collections.OrderedDict())
        if data is None:
            data = got[fid]
            got.move_to_end(fid)
            return data
        got[fid] = data
        if len(got) > self._cap:
            got.popitem(last=False)
        return data

    def function(self, fid: tuple[int, int], data: bytes) -> Any:
        with self._lock:
            fn = self._objs.get(fid)
            if fn is not None:
                self._objs.move_to_end(fid)
                return fn
        fn = loads(data)
        with self._lock:
            self._objs[fid] = fn
            if len(self._objs) > 4 * self._cap:
                self._objs.popitem(last=False)
        return fn

    def forget_peer(self, peer: int) -> None:
        self._sent.pop(peer, None)
        self._recv.pop(peer, None)


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
        sub = RuntimeError(f"{type(exc).__qualname__}: {describe(exc, 400)} (original exception could not be pickled)")
        return pickle.dumps((sub, tb), PROTOCOL), []


def unpack_exception(data: Any, bufs: Any) -> BaseException:
    exc, tb = loads(data, bufs)
    return _rebuild_exc(exc, tb)

"""The transport layer: how frame lists move between ranks and how workers start, one module per
transport, and the registry that maps ``DTMExecutor(transport=name)`` to a pool factory.

Modules: `base` (the protocols), `framing` (the socket wire format and star), `worker` (the one
worker start-up), then `local`, `memory`, `ssh`, `tcp`, `mpi`. They may import `_lifecycle`, the
scheduler and the leaves; never `_executor` or the DTM layer.

Names are case-insensitive. Built-in transports are registered as ``"module:attr"`` strings and
imported on first use, so ``import dtm_executor`` imports neither ``ssl`` nor ``mpi4py``. Others
come from `register_transport`, or from the entry-point group ``dtm_executor.transports``, which
is read only when a name is not registered (see "How to add a transport" in docs/design.md).
"""

from __future__ import annotations

import importlib
import threading
from typing import Any, Iterable, Union

from .base import PoolFactory

#: The entry-point group of third-party transports: ``name = "package.module:factory"``.
ENTRY_POINT_GROUP = "dtm_executor.transports"

#: The keyword options of the TCP transport's pool (``DTMExecutor(hostfile=...)``); see
#: `dtm_executor._transports.tcp.TcpPool` for their meaning.
TCP_OPTIONS = frozenset({
    "hostfile", "hosts", "ssh_command", "remote_python", "remote_dir", "tls_cert", "tls_key",
    "tls_ca", "connect_timeout", "start_timeout", "handshake_timeout", "listen_address",
    "port", "max_frame_bytes",
})

Target = Union[PoolFactory, str]


class _Entry:
    __slots__ = ("name", "target", "options")

    def __init__(self, name: str, target: Target, options: frozenset[str] | None) -> None:
        self.name = name  # as registered (reported back by DTMExecutor: ``ex._kind``)
        self.target = target  # the factory, or "module:attr" until first used
        self.options = options  # its keyword options; None: every option left is passed on


_BUILTIN = {
    "local": _Entry("local", "dtm_executor._transports.local:LocalPool", frozenset()),
    "memory": _Entry("memory", "dtm_executor._transports.memory:MemoryPool", frozenset()),
    "mpi": _Entry("mpi", "dtm_executor._transports.mpi:MPIPool", frozenset()),
    "tcp": _Entry("tcp", "dtm_executor._transports.tcp:TcpPool", TCP_OPTIONS),
}
_registry: dict[str, _Entry] = dict(_BUILTIN)
_lock = threading.Lock()


def register_transport(name: str, factory: Target, *, options: Iterable[str] | None = None) -> None:
    """Make ``DTMExecutor(transport=name)`` (any case) start its workers with ``factory``.

    ``factory(max_workers, start, options)`` returns the pool of one executor: its ``transport``
    (rank 0's end, a `Transport`), ``workers`` (the ranks that run tasks), ``local_worker``
    (whether rank 0 runs tasks too), ``describe(rank)``, ``exit_status(rank)``,
    ``join(timeout)`` and ``kill()``; optionally ``replace`` and ``stop_replacing`` to replace
    lost workers. ``start`` is what each worker needs: ``start.frames(rank, size)`` is the first
    message to hand it, which the worker gives to `serve_worker`. ``options`` is the dict of
    `DTMExecutor` keyword arguments left over; the factory pops those it knows (the rest are
    warned about), or, when ``options`` names them here, only those reach it (any other is a
    ``TypeError``, as for the built-in transports). ``factory`` may also be a
    ``"module:attr"`` string, imported on first use. Registering a name again replaces it.
    """
    if not isinstance(name, str) or not name.strip():
        raise TypeError(f"a transport name must be a non-empty string, not {name!r}")
    key = name.strip().lower()
    if key == "auto":
        raise ValueError("'auto' is not a transport name: it chooses one")
    if key in _BUILTIN:
        raise ValueError(f"{name!r} is a built-in transport; choose another name")
    if isinstance(factory, str):
        if ":" not in factory:
            raise ValueError(f"a factory given by name must be 'module:attr', not {factory!r}")
    elif not callable(factory):
        raise TypeError(f"the factory of transport {name!r} must be callable, not {factory!r}")
    opts = None if options is None else frozenset(options)
    with _lock:
        _registry[key] = _Entry(name.strip(), factory, opts)


def find(name: str) -> _Entry | None:
    """The transport called ``name`` (any case): built in, registered, or else from the
    ``dtm_executor.transports`` entry points (loaded, then kept). None if there is none."""
    key = name.strip().lower()
    with _lock:
        entry = _registry.get(key)
    if entry is not None:
        return entry
    for ep in _entry_points():
        if ep.name.strip().lower() == key:
            loaded = ep.load()
            opts = getattr(loaded, "transport_options", None)
            new = _Entry(ep.name.strip(), loaded, None if opts is None else frozenset(opts))
            with _lock:
                return _registry.setdefault(key, new)
    return None


def names(*, entry_points: bool = False) -> list[str]:
    """The names of the known transports (with ``entry_points``, also those not loaded yet)."""
    with _lock:
        out = {e.name for e in _registry.values()}
    if entry_points:
        known = {n.lower() for n in out}
        out |= {ep.name for ep in _entry_points() if ep.name.lower() not in known}
    return sorted(out)


def factory(entry: _Entry) -> PoolFactory:
    """The pool factory of ``entry``, imported now if it was given as ``"module:attr"``."""
    target = entry.target
    if isinstance(target, str):
        module, _, attr = target.partition(":")
        target = getattr(importlib.import_module(module), attr)
        entry.target = target
    return target


def options_of(name: str) -> frozenset[str] | None:
    """The keyword options of a known transport; None if it takes whatever is left (or if it is
    not registered)."""
    with _lock:
        entry = _registry.get(name.strip().lower())
    return None if entry is None else entry.options


def all_options() -> dict[str, frozenset[str]]:
    """The keyword options of every registered transport that declares them, by name."""
    with _lock:
        return {e.name: e.options for e in _registry.values() if e.options is not None}


def _entry_points() -> list[Any]:
    from importlib.metadata import entry_points  # imported when used: slow to import (email, zipfile)

    return list(entry_points(group=ENTRY_POINT_GROUP))

"""DTM's global options, in DTM's spellings and in Python style, normalized and validated once.

``dtm.setOptions(taskGranularity=0.05)`` and ``DTMExecutor(task_granularity=0.05)`` mean the same
thing; so do the legacy values (``communicationManager="deap.dtm.mpi4py"`` selects the MPI
transport). An unknown name is a warning naming it when it comes through ``dtm.setOptions`` (DTM
ignored unknown options silently, which hid typos) and a ``TypeError`` when given to
`DTMExecutor` (a Python call); a known option with a wrong value is a `ValueError`, raised where
it was given.

The DTM layer: imports the transport registry (which transports exist, and their options) and the
leaves; never `_executor`.
"""

from __future__ import annotations

import difflib
import logging
import math
import os
import threading
import warnings
from dataclasses import dataclass, replace
from typing import Any, Mapping

from . import _transports

#: Every accepted spelling -> the canonical (Python-style) name.
_ALIASES: dict[str, str] = {
    "communicationManager": "transport",
    "communication_manager": "transport",
    "transport": "transport",
    "loadBalancer": "load_balancer",
    "load_balancer": "load_balancer",
    "printSummary": "print_summary",
    "print_summary": "print_summary",
    "setTraceMode": "trace_mode",
    "set_trace_mode": "trace_mode",
    "traceMode": "trace_mode",
    "trace_mode": "trace_mode",
    "traceDir": "trace_dir",
    "trace_dir": "trace_dir",
    "taskGranularity": "task_granularity",
    "task_granularity": "task_granularity",
}

#: Legacy communication managers -> transport names.
_TRANSPORTS = {
    "deap.dtm.mpi4py": "mpi",
    "deap.dtm.commmanagermpi4py": "mpi",
    "commmanagermpi4py": "mpi",
    "mpi4py": "mpi",
    "mpi": "mpi",
    "deap.dtm.commmanagertcp": "tcp",
    "commmanagertcp": "tcp",
    "tcp": "tcp",
    "local": "local",
    "auto": "auto",
}

_BALANCERS = ("pdb", "deap.dtm.loadbalancerpdb", "loadbalancerpdb")

#: `DTMExecutor`'s own keyword parameters (for the "did you mean" of a mistyped one).
EXECUTOR_KEYWORDS = (
    "max_workers", "transport", "initializer", "initargs", "max_threads", "max_retries",
    "print_summary", "progress", "trace_dir",
)

#: `DTMExecutor` arguments that cannot change once its workers run.
FIXED_AT_START = ("max_workers", "max_threads", "max_retries", "initializer", "initargs")

#: The default trace directory, as in DTM.
DEFAULT_TRACE_DIR = "DtmLog"


class DTMOptionWarning(UserWarning):
    """An option was not understood (or has no effect here)."""


@dataclass(frozen=True)
class Options:
    """Normalized DTM options. ``None`` means "not given" (a later default applies)."""

    transport: str | None = None
    load_balancer: str = "PDB"
    print_summary: bool = False
    trace_mode: bool = False
    trace_dir: str | None = None
    task_granularity: float | None = None


def canonical(name: str) -> str | None:
    return _ALIASES.get(name)


def _bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):  # old code wrote printSummary=1
        return bool(value)
    raise ValueError(f"{name} must be True or False, not {value!r}")


def transport_name(value: Any, name: str = "communicationManager") -> str:
    """Map a communication manager (DTM's module names too) to a transport name."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a string such as 'deap.dtm.mpi4py', not {value!r}")
    got = _TRANSPORTS.get(value.lower())
    if got is not None:
        return got
    entry = _transports.find(value)  # any other registered transport
    if entry is not None:
        return entry.name
    raise ValueError(
        f"{name}={value!r} is not a communication manager: use 'deap.dtm.mpi4py' (transport 'mpi'), "
        f"'deap.dtm.commManagerTCP' (transport 'tcp'), or one of {sorted({*_transports.names(), 'auto'})}"
    )


def check(canon: str, value: Any, given_as: str | None = None) -> Any:
    """Validate and normalize the value of one known option (``ValueError`` if wrong)."""
    name = given_as or canon
    if canon == "transport":
        return transport_name(value, name)
    if canon == "load_balancer":
        if isinstance(value, str) and value.lower() in _BALANCERS:
            return "PDB"
        raise ValueError(
            f"{name}={value!r}: only DTM's default 'PDB' is accepted (dtm_executor always balances "
            "by work stealing)"
        )
    if canon in ("print_summary", "trace_mode"):
        return _bool(name, value)
    if canon == "trace_dir":
        if isinstance(value, (str, os.PathLike)) and os.fspath(value):
            return os.fspath(value)
        raise ValueError(f"{name} must be a directory path, not {value!r}")
    if canon == "task_granularity":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a number of seconds >= 0, not {value!r}")
        return float(value)
    raise KeyError(canon)  # pragma: no cover - callers only pass known names


def warn_unknown(names: Any, where: str = "DTMExecutor()", stacklevel: int = 3) -> None:
    """One warning per unknown option, naming it (DTM ignored them: a typo went unnoticed)."""
    for key in names:
        warnings.warn(
            f"{where}: unknown option {key!r} is ignored", DTMOptionWarning, stacklevel=stacklevel
        )


def unexpected_keyword(key: str, where: str = "DTMExecutor()") -> TypeError:
    """What Python says of a keyword no parameter takes, with the closest known name."""
    known = [*EXECUTOR_KEYWORDS, *_ALIASES, *set().union(*_transports.all_options().values())]
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return TypeError(f"{where} got an unexpected keyword argument {key!r}{hint}")


def known_keyword(key: str) -> bool:
    """Whether `DTMExecutor` takes ``key`` (itself, as a DTM option, or for a transport)."""
    return (key in EXECUTOR_KEYWORDS or key in _ALIASES
            or any(key in names for names in _transports.all_options().values()))


def take_transport_options(options: dict[str, Any], kind: str, explicit: bool) -> dict[str, Any]:
    """Pop every remaining keyword option of `DTMExecutor`: those of transport ``kind`` are
    returned for its pool; an unknown name is a ``TypeError`` (a typo must not run with the
    defaults); an option of another transport is a ``ValueError`` if the caller named the
    transport (``explicit``), else unused: with ``transport="auto"`` a program may carry the
    settings of the runs that end up on TCP. A transport registered without a list of options
    gets everything; its pool pops what it knows."""
    every = _transports.all_options()
    mine = _transports.options_of(kind)
    if mine is None:
        out = dict(options)
        options.clear()
        return out
    out = {}
    unused = []
    for key in list(options):
        value = options.pop(key)
        if key in mine:
            out[key] = value
            continue
        owners = [k for k, names in every.items() if key in names]
        if not owners:
            raise unexpected_keyword(key)
        if explicit:
            raise ValueError(
                f"{key}= is an option of the {owners[0]!r} transport, and this executor uses "
                f"transport={kind!r}"
            )
        unused.append(key)
    if unused:
        logging.getLogger("dtm_executor").debug(
            "options %s are for another transport; this executor uses %r", unused, kind
        )
    return out


def take_executor_options(options: dict[str, Any], kind: str) -> Options:
    """Pop the DTM options (either spelling) from `DTMExecutor`'s keyword options, checked (a bad
    value is a ``ValueError``, before any worker starts). What is left belongs to the pool factory;
    whatever it does not take either goes to `warn_unknown`. ``kind`` is the chosen transport."""
    values: dict[str, Any] = {}
    given: dict[str, tuple[str, Any]] = {}
    for key in list(options):
        canon = canonical(key)
        if canon is None:
            continue
        value = options.pop(key)
        if canon in values:
            raise ValueError(f"option {given[canon][0]!r} given twice (as {key!r} too)")
        values[canon] = check(canon, value, key)
        given[canon] = (key, value)
    if "transport" in values:
        want = values.pop("transport")
        if want not in (kind, "auto"):
            key, value = given["transport"]
            raise ValueError(
                f"{key}={value!r} selects transport {want!r} but this executor uses {kind!r}: "
                f"pass transport={want!r}"
            )
    return _finish(Options(**values))


def changes_for_executor(
    args: tuple[Any, ...], kwargs: Mapping[str, Any], kind: str, tracing: bool, stacklevel: int
) -> dict[str, Any]:
    """``DTMExecutor.setOptions``: check everything first (a ``ValueError`` changes nothing),
    and return what to change: ``task_granularity``, ``print_summary``, ``progress``,
    ``trace_dir`` (None: stop writing the trace). ``kind`` is the executor's transport,
    ``tracing`` whether its workers record a trace (decided when they started)."""
    for a in args:
        warnings.warn(
            f"setOptions(): positional argument {a!r} is ignored (options are keywords)",
            DTMOptionWarning, stacklevel=stacklevel,
        )
    fixed = set(FIXED_AT_START).union(*_transports.all_options().values())
    values: dict[str, Any] = {}
    given: dict[str, str] = {}
    unknown = []
    for key, value in kwargs.items():
        canon = canonical(key) or (key if key == "progress" else None)
        if canon is None:
            if key in fixed:
                raise ValueError(
                    f"setOptions(): {key} cannot change once the executor's workers run; "
                    f"pass {key}= to DTMExecutor()"
                )
            unknown.append(key)
            continue
        if canon in values:
            raise ValueError(f"option {given[canon]!r} given twice (as {key!r} too)")
        values[canon] = _bool(key, value) if canon == "progress" else check(canon, value, key)
        given[canon] = key
    want = values.pop("transport", "auto")
    if want not in (kind, "auto"):
        key = given["transport"]
        raise ValueError(
            f"{key}={kwargs[key]!r} selects transport {want!r} but this executor uses {kind!r}: "
            f"pass transport={want!r} to DTMExecutor()"
        )
    values.pop("load_balancer", None)  # checked: only DTM's default exists
    trace_mode = values.pop("trace_mode", None)
    trace_dir = values.pop("trace_dir", None)
    if trace_mode and not tracing:
        raise ValueError(
            f"{given['trace_mode']}=True: this executor's workers started without tracing; "
            "ask for it when creating the executor: DTMExecutor(trace_dir=...)"
        )
    if trace_mode is False:
        if trace_dir is not None:
            warnings.warn("traceDir has no effect without setTraceMode=True", DTMOptionWarning,
                          stacklevel=stacklevel)
        values["trace_dir"] = None
    elif trace_dir is not None:
        if tracing:
            values["trace_dir"] = trace_dir
        else:
            warnings.warn("traceDir has no effect without setTraceMode=True", DTMOptionWarning,
                          stacklevel=stacklevel)
    warn_unknown(unknown, "setOptions()", stacklevel=stacklevel + 1)
    return values


def _finish(opts: Options) -> Options:
    if opts.trace_dir is not None and not opts.trace_mode:
        warnings.warn(
            "traceDir has no effect without setTraceMode=True", DTMOptionWarning, stacklevel=4
        )
    if opts.trace_mode and opts.trace_dir is None:
        opts = replace(opts, trace_dir=DEFAULT_TRACE_DIR)
    return opts


# -- the process-wide options of `dtm.setOptions` ------------------------------------------
_lock = threading.Lock()
_global: dict[str, Any] = {}


def set_global(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    """``dtm.setOptions``: check known options now (so a wrong value fails where it is written),
    keep everything for ``dtm.start``; unknown names are warned about when the executor starts
    (a transport's own options are only known to it)."""
    for a in args:
        warnings.warn(
            f"dtm.setOptions(): positional argument {a!r} is ignored (options are keywords)",
            DTMOptionWarning, stacklevel=3,
        )
    checked: dict[str, Any] = {}
    for key, value in kwargs.items():
        canon = canonical(key)
        if canon is not None:
            checked[canon] = check(canon, value, key)
        else:
            checked[key] = value
    with _lock:
        _global.update(checked)


def global_options() -> dict[str, Any]:
    with _lock:
        return dict(_global)


def reset_global() -> None:
    with _lock:
        _global.clear()


def global_granularity() -> float:
    """``taskGranularity`` as set by ``dtm.setOptions`` in this process (workers too, when the
    script sets it at module level, as DTM programs do), for maps inside tasks."""
    with _lock:
        g = _global.get("task_granularity")
    return g or 0.0

"""``python -m dtm_executor [-n N | --hostfile F] [--transport T] script.py [args...]`` (or
``-m module [args...]``): run a script, or a module as ``python -m`` does, on a pool.

* ``mpiexec -n N python -m dtm_executor script.py args...``: rank 0 runs the script as
  ``__main__``; every other rank imports it as ``__mp_main__`` (so its functions and classes exist
  there) and serves tasks until rank 0's script ends. An uncaught exception on rank 0 prints its
  traceback once and ends every rank with a non-zero status.
* ``python -m dtm_executor -n N script.py args...``: no MPI; ``DTMExecutor()`` in the script uses
  N local worker processes by default.
* ``--hostfile F``: ``DTMExecutor()`` starts its workers on the hosts of F over TCP/SSH.
* ``--transport T`` makes ``DTMExecutor()`` (``transport="auto"``) use transport T.
* ``-m module``: the module (a package: its ``__main__``) runs as ``__main__`` as with
  ``python -m module``, and workers import it by name, as multiprocessing does.

The script sees ``sys.argv == [script.py, args...]`` and ``sys.path[0]`` = its directory, as
with ``python script.py``; a module sees ``sys.argv == [its file, args...]`` and the current
directory first on ``sys.path``, as with ``python -m``.

An entry point: imports the executor (for its default worker count), the transports and the leaves.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import Any, Sequence

from . import _executor, _serial, _transports
from ._hostfile import ENV_HOSTFILE
from ._transports import mpi as _mpi

#: The two forms, for ``usage:`` (argparse's own would not say that one of them is needed).
USAGE = (
    "python -m dtm_executor [-h] [-n N | --hostfile FILE] [--transport T] script.py [args ...]\n"
    "       python -m dtm_executor [-h] [-n N | --hostfile FILE] [--transport T] -m module [args ...]"
)


class _Formatter(argparse.HelpFormatter):
    def _format_args(self, action: argparse.Action, default_metavar: str) -> str:
        if action.option_strings and action.nargs == argparse.REMAINDER:
            return "module [args ...]"  # argparse would write "..."
        return super()._format_args(action, default_metavar)


def build_parser() -> argparse.ArgumentParser:
    """The launcher's options; extend it by adding arguments before ``script``."""
    p = argparse.ArgumentParser(
        prog="python -m dtm_executor",
        usage=USAGE,
        formatter_class=_Formatter,
        description="Run a Python script, or a module as python -m does, whose DTMExecutor() uses "
        "local workers, MPI ranks or the hosts of a hostfile.",
        epilog="Under mpiexec/srun every rank is a worker and rank 0 runs the script; "
        "see docs/mpi.md.",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument("-n", "--workers", dest="workers", type=_positive_int, default=None, metavar="N",
                       help="local worker processes for DTMExecutor() (not under mpiexec: there the "
                            "number of ranks decides)")
    where.add_argument("--hostfile", default=None, metavar="FILE",
                       help="run the workers on the hosts of this MPI-style hostfile over TCP/SSH "
                            "(implies --transport tcp; see docs/tcp.md)")
    p.add_argument("--transport", default=None, metavar="T",
                   help="transport for DTMExecutor() when the script does not name one: "
                        "auto (default: MPI under mpiexec with several ranks, else local), local, mpi, "
                        "tcp, ...")
    p.add_argument("-m", dest="module", nargs=argparse.REMAINDER, default=None,
                   help="run the module (a package: its __main__) as python -m does, with the "
                        "rest of the command line as its arguments")
    p.add_argument("script", nargs="?", default=None, metavar="script.py", help="the Python script to run")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the script or module")
    return p


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return n


class _NoModule(Exception):
    """The module of ``-m`` cannot be run (``python -m``'s message)."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    if ns.module is not None:
        if not ns.module:
            parser.error("argument -m: expected a module name")
        ns.module, ns.args = ns.module[0], ns.module[1:]
    elif ns.script is None:
        parser.error("the following arguments are required: script.py or -m module")
    # The package was imported before this module became ``__main__`` (by ``-m``), when the
    # main module looked interactive: functions of the script can travel by reference.
    _serial.refresh_main_policy()

    if ns.hostfile is not None:
        if not os.path.exists(ns.hostfile):
            parser.error(f"no such hostfile: {ns.hostfile}")
        os.environ[ENV_HOSTFILE] = os.path.abspath(ns.hostfile)
        if ns.transport is None:
            ns.transport = "tcp"
    transport = (ns.transport or "auto").strip().lower()
    if transport != "auto" and _transports.find(transport) is None:
        parser.error(f"unknown transport {ns.transport!r}; expected one of "
                     f"{_transports.names(entry_points=True)} or auto")
    use_mpi = transport == "mpi" or (transport == "auto" and _mpi.under_mpi_with_peers())
    if use_mpi and ns.workers is not None:
        parser.error("-n/--workers is for local runs: under MPI the number of ranks decides "
                     "(mpiexec -n N python -m dtm_executor script.py)")
    target: Any
    if ns.module is not None:
        try:
            target = _module_details(ns.module)
        except _NoModule as e:
            parser.error(str(e))
    else:
        if not os.path.exists(ns.script):
            parser.error(f"no such script: {ns.script}")
        target = ns.script
    if ns.transport is not None:
        os.environ["DTM_EXECUTOR_TRANSPORT"] = transport  # the default of DTMExecutor(transport="auto")
    if ns.workers is not None:
        n = ns.workers
        _executor.set_default_workers(n)  # the default of DTMExecutor(max_workers=None)
    if ns.module is not None:
        sys.argv[:] = [target[1].origin, *ns.args]  # sys.path[0] stays the current directory
        if use_mpi:
            return _mpi.launch(ns.module, lambda _name: run_module(target),
                               import_main=lambda: _import_module_on_worker(target))
        return run_module(target)
    sys.argv[:] = [ns.script, *ns.args]
    if not getattr(sys.flags, "isolated", 0):
        sys.path[0] = os.path.dirname(os.path.realpath(ns.script))
    if use_mpi:
        return _mpi.launch(ns.script, run_main)
    return run_main(ns.script)


def _module_details(name: str) -> tuple[str, Any, Any]:
    """(module name, spec, code) of what ``python -m name`` runs (a package's ``__main__``).

    `runpy` finds it exactly as ``python -m`` does and with its messages; importing the parent
    packages may raise anything, which propagates like an error of the module itself."""
    import runpy

    if not getattr(sys.flags, "isolated", 0) and os.getcwd() not in sys.path[:1]:
        sys.path.insert(0, os.getcwd())  # as python -m: the current directory first
    return runpy._get_module_details(name, _NoModule)  # type: ignore[attr-defined]


def run_module(target: Any) -> int:
    """Run the module of `_module_details` as ``__main__``; return its exit status."""
    return _run(lambda: _exec_module_as_main(target), target[1].origin)


def _exec_module_as_main(target: tuple[str, Any, Any]) -> None:
    """As `_exec_as_main`, for a module: ``__main__`` and ``__mp_main__`` both name it, and its
    ``__spec__`` tells workers to import it by name (multiprocessing's spawn does the same)."""
    import builtins
    import types

    _name, spec, code = target
    main = types.ModuleType("__main__")
    main.__dict__.update(__file__=spec.origin, __cached__=spec.cached, __builtins__=builtins,
                         __loader__=spec.loader, __spec__=spec, __package__=spec.parent)
    sys.modules["__main__"] = sys.modules["__mp_main__"] = main
    _serial.refresh_main_policy()
    if spec.name.endswith(".__main__"):
        # a package's __main__, which workers do not import (multiprocessing does not either:
        # such files often run their program unguarded): its functions must travel by value
        _serial.main_by_value()
    exec(code, main.__dict__)


def _import_module_on_worker(target: tuple[str, Any, Any]) -> None:
    """An MPI worker rank: import the module as ``__mp_main__`` (not a package's ``__main__``,
    which multiprocessing never imports either: its functions travel by value)."""
    import multiprocessing.spawn as mpspawn

    mpspawn._fixup_main_from_name(target[0])  # type: ignore[attr-defined]


def run_main(script: str) -> int:
    """Run ``script`` as ``__main__``; return its exit status (a traceback is printed once)."""
    return _run(lambda: _exec_as_main(script), script)


def _run(body: Any, path: str) -> int:
    try:
        body()
    except SystemExit as e:
        return _exit_status(e)
    except BaseException as e:  # noqa: BLE001 - reported like the interpreter would
        _print_exception(e, path)
        return 130 if isinstance(e, KeyboardInterrupt) else 1
    return 0


def _exec_as_main(script: str) -> None:
    """Execute ``script`` in a fresh ``__main__`` module, as ``python script.py`` would.

    Not `runpy.run_path`: its temporary module is not what ``sys.modules["__mp_main__"]`` names,
    and workers pickle the script's functions and classes as ``__mp_main__.<name>`` (they import
    it under that name, like multiprocessing's spawn). So both names must mean this module, and
    it stays ``__main__`` after the script ends, for the exit handlers.
    """
    import builtins
    import importlib.machinery
    import types

    with open(script, "rb") as f:
        source = f.read()
    code = compile(source, script, "exec", dont_inherit=True)
    main = types.ModuleType("__main__")
    main.__dict__.update(__file__=script, __cached__=None, __builtins__=builtins,
                         __loader__=importlib.machinery.SourceFileLoader("__main__", script))
    sys.modules["__main__"] = sys.modules["__mp_main__"] = main
    _serial.refresh_main_policy()
    exec(code, main.__dict__)


def _exit_status(e: SystemExit) -> int:
    code: Any = e.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _print_exception(e: BaseException, script: str) -> None:
    """Print the traceback from the script's first frame on (the launcher's frames are noise)."""
    tb = e.__traceback__
    real = os.path.realpath(script)
    t = tb
    while t is not None and os.path.realpath(t.tb_frame.f_code.co_filename) != real:
        t = t.tb_next
    if t is None and isinstance(e, SyntaxError):
        tb = None  # the script did not compile: the error names the file and line already
    traceback.print_exception(type(e), e, t if t is not None else tb)
    sys.stderr.flush()


if __name__ == "__main__":
    sys.exit(main())

"""``python -m dtm_executor [-n N] [--transport T] script.py [args...]``: run a script on a pool.

* ``mpiexec -n N python -m dtm_executor script.py args...``: rank 0 runs the script as
  ``__main__``; every other rank imports it as ``__mp_main__`` (so its functions and classes exist
  there) and serves tasks until rank 0's script ends. An uncaught exception on rank 0 prints its
  traceback once and ends every rank with a non-zero status.
* ``python -m dtm_executor -n N script.py args...``: no MPI; ``DTMExecutor()`` in the script uses
  N local worker processes by default.
* ``--transport T`` makes ``DTMExecutor()`` (``transport="auto"``) use transport T.

The script sees ``sys.argv == [script.py, args...]`` and ``sys.path[0]`` = its directory, as
with ``python script.py``.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import Any, Sequence


def build_parser() -> argparse.ArgumentParser:
    """The launcher's options; extend it by adding arguments before ``script``."""
    p = argparse.ArgumentParser(
        prog="python -m dtm_executor",
        description="Run a Python script whose DTMExecutor() uses local workers or MPI ranks.",
        epilog="Under mpiexec/srun every rank is a worker and rank 0 runs the script; "
        "see docs/mpi.md.",
    )
    p.add_argument("-n", "--workers", dest="workers", type=_positive_int, default=None, metavar="N",
                   help="local worker processes for DTMExecutor() (not under mpiexec: there the "
                        "number of ranks decides)")
    p.add_argument("--transport", default=None, metavar="T",
                   help="transport for DTMExecutor() when the script does not name one: "
                        "auto (default: MPI under mpiexec with several ranks, else local), local, mpi, "
                        "tcp, ...")
    p.add_argument("--hostfile", default=None, metavar="FILE",
                   help="run the workers on the hosts of this MPI-style hostfile over TCP/SSH "
                        "(implies --transport tcp; see docs/tcp.md)")
    p.add_argument("script", help="the Python script to run")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the script")
    return p


def _positive_int(text: str) -> int:
    n = int(text)
    if n <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return n


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    from . import _executor, _mpi, _serial

    # The package was imported before this module became ``__main__`` (by ``-m``), when the
    # main module looked interactive: functions of the script can travel by reference.
    _serial.refresh_main_policy()

    if ns.hostfile is not None:
        if not os.path.exists(ns.hostfile):
            parser.error(f"no such hostfile: {ns.hostfile}")
        from ._hostfile import ENV_HOSTFILE

        os.environ[ENV_HOSTFILE] = os.path.abspath(ns.hostfile)
        if ns.transport is None:
            ns.transport = "tcp"
    transport = (ns.transport or "auto").strip().lower()
    if transport != "auto" and transport not in _executor._POOLS:
        parser.error(f"unknown transport {ns.transport!r}; expected one of {sorted(_executor._POOLS)} or auto")
    use_mpi = transport == "mpi" or (transport == "auto" and _mpi.under_mpi_with_peers())
    if use_mpi and ns.workers is not None:
        parser.error("-n/--workers is for local runs: under MPI the number of ranks decides "
                     "(mpiexec -n N python -m dtm_executor script.py)")
    if not os.path.exists(ns.script):
        parser.error(f"no such script: {ns.script}")
    if ns.transport is not None:
        os.environ["DTM_EXECUTOR_TRANSPORT"] = transport  # the default of DTMExecutor(transport="auto")
    if ns.workers is not None:
        n = ns.workers
        _executor._usable_cpus = lambda: n  # the default of DTMExecutor(max_workers=None)
    sys.argv[:] = [ns.script, *ns.args]
    if not getattr(sys.flags, "isolated", 0):
        sys.path[0] = os.path.dirname(os.path.realpath(ns.script))
    if use_mpi:
        return _mpi.launch(ns.script, run_main)
    return run_main(ns.script)


def run_main(script: str) -> int:
    """Run ``script`` as ``__main__``; return its exit status (a traceback is printed once)."""
    try:
        _exec_as_main(script)
    except SystemExit as e:
        return _exit_status(e)
    except BaseException as e:  # noqa: BLE001 - reported like the interpreter would
        _print_exception(e, script)
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

    from . import _serial

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

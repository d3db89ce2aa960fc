"""Functions and classes of ``__main__`` that workers cannot find by reference travel by value
(issue 8, item 8): those defined under ``if __name__ == "__main__":`` (workers import the script
without running that block), and every function of a program read from stdin (``python -``) or
given with ``python -c``, which workers cannot import at all. Module-level functions of a script
file keep travelling by reference.

Every program runs as a real subprocess in a session of its own, bounded by a timeout; nothing of
its session may outlive it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(200)

PROGRAM = textwrap.dedent('''\
    import sys
    from dtm_executor import DTMExecutor, current_executor
    from dtm_executor import _serial

    K = 1

    def add_k(x):
        return x + K

    def version():
        return "top"

    if __name__ == "__main__":
        def score(x):
            return x * x + K

        class Box:
            def __init__(self, v):
                self.v = v

        def unbox(b):
            return b.v * 2

        def make_box(v):
            return Box(v)

        def version():
            return "main block"

        def inner(x):
            import time
            time.sleep(0.002)  # long enough for the other worker to steal some
            return x + 1

        def outer(n):
            ex = current_executor()
            return sum(f.result() for f in [ex.submit(inner, i) for i in range(n)])

        K = 10
        with DTMExecutor(2) as ex:
            print("score", list(ex.map(score, range(4))), ex.submit(score, 3).result())
            print("box", ex.submit(unbox, Box(21)).result(), type(ex.submit(make_box, 4).result()) is Box)
            print("version", ex.submit(version).result())
            print("nested", ex.submit(outer, 60).result())
            print("add_k", ex.submit(add_k, 0).result())
            K = 100
            print("add_k", ex.submit(add_k, 0).result())
            print("by reference", b"cloudpickle" not in _serial.FunctionCache(0).pickle_fn(add_k)[1])
        print("done")
    ''')

COMMON = [
    "score [10, 11, 14, 19] 19",
    "box 42 True",
    "version main block",
    f"nested {sum(range(1, 61))}",
]
#: a script file: module-level functions go by reference (the worker's own K is 1)
AS_FILE = COMMON + ["add_k 1", "add_k 1", "by reference True", "done"]
#: stdin / -c: everything goes by value, as it is at each submit
AS_VALUE = COMMON + ["add_k 10", "add_k 100", "by reference False", "done"]


def _session_members(sid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as f:
                data = f.read().decode(errors="replace")
        except OSError:
            continue
        rest = data[data.rindex(")") + 2 :].split()
        if int(rest[3]) == sid and rest[0] not in ("Z", "X"):
            out.append(int(d))
    return out


def _run(cmd: list[str], cwd: Path, stdin_text: str | None = None, timeout: float = 120) -> tuple[int, str, str]:
    """Run ``cmd`` in its own session; on timeout kill the session and fail. Nothing may be left."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("DTM_EXECUTOR_TRANSPORT", None)
    proc = subprocess.Popen(
        cmd, stdin=subprocess.PIPE if stdin_text is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        cwd=str(cwd), env=env,
    )
    try:
        out, err = proc.communicate(stdin_text, timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{cmd[:3]} did not end within {timeout} s\nstdout:\n{out}\nstderr:\n{err[-5000:]}",
                    pytrace=False)
    end = time.monotonic() + 10
    while _session_members(proc.pid):
        if time.monotonic() > end:
            left = _session_members(proc.pid)
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"processes left running after {cmd[:3]}: {left}", pytrace=False)
        time.sleep(0.05)
    return proc.returncode, out, err


@pytest.fixture
def script(tmp_path: Path) -> Path:
    p = tmp_path / "prog.py"
    p.write_text(PROGRAM)
    return p


def test_script_file_main_block_functions(script: Path) -> None:
    code, out, err = _run([sys.executable, str(script)], script.parent)
    assert code == 0, err[-5000:]
    assert out.splitlines() == AS_FILE, err[-5000:]


def test_launcher_main_block_functions(script: Path) -> None:
    code, out, err = _run([sys.executable, "-m", "dtm_executor", "-n", "2", str(script)], script.parent)
    assert code == 0, err[-5000:]
    assert out.splitlines() == AS_FILE, err[-5000:]


def test_program_piped_on_stdin(script: Path) -> None:
    # ``python - <<EOF``: workers must not try to open "<stdin>"; everything goes by value
    code, out, err = _run([sys.executable, "-"], script.parent, stdin_text=PROGRAM)
    assert code == 0, err[-5000:]
    assert out.splitlines() == AS_VALUE, err[-5000:]


def test_program_given_with_dash_c(script: Path) -> None:
    code, out, err = _run([sys.executable, "-c", PROGRAM], script.parent)
    assert code == 0, err[-5000:]
    assert out.splitlines() == AS_VALUE, err[-5000:]


def test_main_guard_names_are_found(tmp_path: Path) -> None:
    """What counts as defined in the main block: any def/class under a top-level ``if`` on
    ``__name__`` (either branch, at any depth of statements), not inside function bodies."""
    src = textwrap.dedent('''\
        import os
        def top(): pass
        class Top: pass
        if __name__ == "__main__":
            def a(): 
                def not_this(): pass
            for i in range(2):
                class B: pass
            try:
                def c(): pass
            except Exception:
                pass
        if "__main__" != __name__:
            pass
        else:
            def d(): pass
        if os.name:
            def e(): pass
        ''')
    p = tmp_path / "guards.py"
    p.write_text(src)
    from dtm_executor import _serial

    assert _serial._guard_names_of(str(p)) == frozenset({"a", "B", "c", "d"})
    assert _serial._guard_names_of(str(tmp_path / "missing.py")) == frozenset()

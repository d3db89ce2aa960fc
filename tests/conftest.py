"""Shared fixtures: executors that are always shut down, a default timeout, and a check that no
process started by a test module outlives it."""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Callable, Iterator

import pytest

from dtm_executor import DTMExecutor

#: Seconds a test may run when it sets no ``@pytest.mark.timeout`` and neither ``--timeout``,
#: ``PYTEST_TIMEOUT`` nor the ``timeout`` ini option says otherwise.
DEFAULT_TIMEOUT = 120

#: Seconds the leftover-process check waits for children to exit on their own.
LEFTOVER_GRACE = 10.0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        configured = config.getoption("timeout") or config.getini("timeout")
    except (ValueError, KeyError):  # pytest-timeout not loaded
        return
    if configured or os.environ.get("PYTEST_TIMEOUT"):
        return
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(DEFAULT_TIMEOUT))


# -- process bookkeeping ------------------------------------------------------------------
def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, session id) of a live process, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode(errors="replace")
    except OSError:
        return None
    rest = data[data.rindex(")") + 2 :].split()  # the command name may contain spaces and ')'
    return rest[0], int(rest[1]), int(rest[3])


def _all_pids() -> list[int]:
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (a zombie has exited, it is only unreaped)."""
    st = _stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def live_children(ppid: int | None = None) -> list[int]:
    """Running (non-zombie) direct children of ``ppid`` (default: this process)."""
    ppid = os.getpid() if ppid is None else ppid
    out = []
    for pid in _all_pids():
        st = _stat(pid)
        if st is not None and st[1] == ppid and st[0] not in ("Z", "X"):
            out.append(pid)
    return out


def session_members(sid: int) -> list[int]:
    """Running (non-zombie) processes of session ``sid`` (a script started with
    ``start_new_session=True`` and everything it started)."""
    out = []
    for pid in _all_pids():
        st = _stat(pid)
        if st is not None and st[2] == sid and st[0] not in ("Z", "X"):
            out.append(pid)
    return out


def wait_until(pred: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    """Poll ``pred`` until it returns something truthy (returned) or ``timeout`` passes (the last
    falsy value is returned)."""
    end = time.monotonic() + timeout
    while True:
        got = pred()
        if got or time.monotonic() >= end:
            return got
        time.sleep(interval)


def read_line(proc: Any, unread: bytearray, timeout: float) -> str | None:
    """The next line of ``proc``'s stdout pipe, read with ``os.read`` into ``unread`` (never
    through the file object's buffer, which ``select`` cannot see): "" at EOF, None on timeout."""
    import select

    fd = proc.stdout.fileno()
    end = time.monotonic() + timeout
    while b"\n" not in unread:
        left = end - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return None
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        unread += chunk
    i = unread.find(b"\n")
    n = len(unread) if i < 0 else i + 1
    line = bytes(unread[:n]).decode(errors="replace")
    del unread[:n]
    return line


def _describe(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        cmd = "?"
    return f"{pid}: {cmd[:200]}"


@pytest.fixture(scope="module", autouse=True)
def _no_leftover_processes(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a test module (and its module-scoped executors) is torn down, no child process of
    the test process may still run. Leftovers are killed (they are ours) and reported."""
    before = set(live_children())
    yield

    def leftovers() -> list[int]:
        return [p for p in live_children() if p not in before]

    if wait_until(lambda: not leftovers(), LEFTOVER_GRACE):
        return
    left = leftovers()
    desc = [_describe(p) for p in left]
    for pid in left:
        try:
            os.kill(pid, 9)
        except OSError:
            pass
        try:
            os.waitpid(pid, 0)
        except OSError:
            pass
    pytest.fail(
        f"{request.module.__name__} left {len(left)} child process(es) running:\n" + "\n".join(desc),
        pytrace=False,
    )


# -- executors ----------------------------------------------------------------------------
def shutdown_or_kill(ex: DTMExecutor, timeout: float = 60.0) -> bool:
    """Shut ``ex`` down (cancelling queued work); if that takes longer than ``timeout``, kill its
    worker processes. Returns False if shutdown hung."""
    t = threading.Thread(
        target=lambda: ex.shutdown(wait=True, cancel_futures=True), name="test-shutdown", daemon=True
    )
    t.start()
    t.join(timeout)
    if t.is_alive():
        pool = getattr(ex, "_pool", None)
        if pool is not None:
            pool.kill()
        return False
    return True


@pytest.fixture(scope="module")
def ex2() -> Iterator[DTMExecutor]:
    """One two-worker executor shared by a module's tests (tests must leave it idle)."""
    ex = DTMExecutor(2)
    try:
        yield ex
    finally:
        assert shutdown_or_kill(ex), "shutdown of the shared executor hung"


@pytest.fixture
def make_executor() -> Iterator[Callable[..., DTMExecutor]]:
    """Factory of fresh executors; each is shut down (or killed if shutdown hangs) after the test."""
    made: list[DTMExecutor] = []

    def make(*args: Any, **kwargs: Any) -> DTMExecutor:
        ex = DTMExecutor(*args, **kwargs)
        made.append(ex)
        return ex

    yield make
    hung = [ex for ex in made if not shutdown_or_kill(ex)]
    assert not hung, f"shutdown hung for {len(hung)} executor(s)"


@pytest.fixture
def proctools() -> Any:
    """Process helpers for tests (conftest is not imported directly by test modules)."""
    import types

    return types.SimpleNamespace(
        pid_alive=pid_alive,
        live_children=live_children,
        session_members=session_members,
        wait_until=wait_until,
        describe=_describe,
    )


class ScriptRun:
    """A Python script started in a session of its own, so that everything it starts (its
    workers) can be found by session id and, whatever happens, killed afterwards."""

    def __init__(self, path: Any, args: tuple[str, ...] = (), inline: bool = False, **popen: Any) -> None:
        import subprocess
        import sys

        # inline: ``python -c SOURCE`` (a __main__ without a file, like an interactive session)
        head = ["-c", open(path).read()] if inline else [str(path)]
        self.proc = subprocess.Popen(
            [sys.executable, *head, *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True, cwd=str(os.path.dirname(str(path))), **popen,
        )
        self.sid = self.proc.pid  # the session leader's pid is the session id
        self.stdout = ""
        self.stderr = ""
        self._unread = bytearray()  # read from the pipe by readline, not returned yet

    @property
    def pid(self) -> int:
        return self.proc.pid

    def readline(self, timeout: float = 60.0) -> str:
        """The next stdout line ("" at the end; fails the test if none comes in time).

        Reads the pipe itself (``os.read``): ``select`` on a buffered file object misses lines
        its buffer already holds (two lines in one read: the second was never seen)."""
        line = read_line(self.proc, self._unread, timeout)
        if line is None:
            pytest.fail(f"no output from the script within {timeout} s", pytrace=False)
        self.stdout += line
        return line

    def wait(self, timeout: float = 60.0) -> int:
        import subprocess

        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            out, err = self.proc.communicate()
            self.stdout += self._take_unread() + out
            self.stderr += err
            pytest.fail(
                f"the script did not exit within {timeout} s\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}",
                pytrace=False,
            )
        self.stdout += self._take_unread() + out
        self.stderr += err
        return self.proc.returncode

    def _take_unread(self) -> str:
        text = self._unread.decode(errors="replace")
        self._unread.clear()
        return text

    def members(self) -> list[int]:
        return session_members(self.sid)

    def kill(self) -> None:
        """SIGKILL every process of the script's session (they are all ours)."""
        for pid in [self.proc.pid, *self.members()]:
            try:
                os.kill(pid, 9)
            except OSError:
                pass


@pytest.fixture
def run_script(tmp_path: Any) -> Iterator[Callable[..., ScriptRun]]:
    """``run_script(source, *args)`` writes ``source`` to a file in ``tmp_path`` and starts it.
    At teardown nothing of its session may be left running (leftovers are killed, then reported)."""
    import textwrap

    runs: list[ScriptRun] = []

    def start(
        source: str, *args: str, name: str = "script.py", inline: bool = False, **popen: Any
    ) -> ScriptRun:
        path = tmp_path / name
        path.write_text(textwrap.dedent(source))
        run = ScriptRun(path, args, inline=inline, **popen)
        runs.append(run)
        return run

    yield start
    left: list[str] = []
    for run in runs:
        if run.proc.poll() is None:
            run.kill()
            run.proc.wait(10)
        if not wait_until(lambda run=run: not run.members(), LEFTOVER_GRACE):
            left += [_describe(p) for p in run.members()]
            run.kill()
        for stream in (run.proc.stdout, run.proc.stderr):
            if stream is not None:
                stream.close()
    assert not left, "processes of a test script outlived it:\n" + "\n".join(left)

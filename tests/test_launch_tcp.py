"""`--hostfile` on the launcher and the legacy `--dtmTCPhosts=FILE` flag select the TCP transport."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.timeout(120)

SCRIPT = textwrap.dedent("""\
    import os
    from dtm_executor import DTMExecutor
    if __name__ == "__main__":
        with DTMExecutor() as ex:
            pids = set(ex.map(lambda _: os.getpid(), range(200)))
            print(type(ex._pool).__name__, len(ex._pool.workers), os.getpid() not in pids)
    """)


def _run(tmp_path, *args: str) -> str:
    (tmp_path / "hosts").write_text("# local only: no ssh\nlocalhost slots=2\n")
    (tmp_path / "script.py").write_text(SCRIPT)
    r = subprocess.run([sys.executable, *args], cwd=tmp_path, capture_output=True, text=True, timeout=90)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_launcher_hostfile_selects_tcp(tmp_path) -> None:
    assert _run(tmp_path, "-m", "dtm_executor", "--hostfile", "hosts", "script.py") == "TcpPool 2 True"


def test_legacy_dtmTCPhosts_flag_selects_tcp(tmp_path) -> None:
    assert _run(tmp_path, "script.py", "--dtmTCPhosts=hosts") == "TcpPool 2 True"


def test_no_hostfile_stays_local(tmp_path) -> None:
    assert _run(tmp_path, "script.py").startswith("LocalPool")


def test_launcher_missing_hostfile_is_a_clear_error(tmp_path) -> None:
    (tmp_path / "script.py").write_text(SCRIPT)
    r = subprocess.run([sys.executable, "-m", "dtm_executor", "--hostfile", "nope", "script.py"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "no such hostfile: nope" in r.stderr

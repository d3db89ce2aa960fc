"""Hostfiles in MPI syntax, the legacy ``--dtmTCPhosts=FILE`` flag, and local-only TCP runs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dtm_executor import DTMExecutor
from dtm_executor._hostfile import (
    ENV_HOSTFILE,
    HostfileError,
    HostSpec,
    argv_hostfile,
    is_local,
    parse_hostfile,
    parse_hosts,
    resolve_hosts,
    strip_argv_hostfile,
)


def square(x: int) -> int:
    return x * x


# -- syntax -------------------------------------------------------------------------------------
def test_mpi_syntax(tmp_path: Path) -> None:
    f = tmp_path / "hosts"
    f.write_text(textwrap.dedent("""\
        # the cluster
        node1 slots=4
        node2            # one slot

        alice@node3.example.org slots=2 max_slots=8
        node4:3
        10.0.0.7 slots=1
        fe80::1 slots=2
        [::1]
        node1 slots=2    # named again: slots add up
    """))
    assert parse_hostfile(f) == [
        HostSpec("node1", 6),
        HostSpec("node2", 1),
        HostSpec("alice@node3.example.org", 2),
        HostSpec("node4", 3),
        HostSpec("10.0.0.7", 1),
        HostSpec("fe80::1", 2),
        HostSpec("[::1]", 1),
    ]


def test_hosts_list_and_string() -> None:
    assert parse_hosts(["a slots=2", "b"]) == [HostSpec("a", 2), HostSpec("b", 1)]
    assert parse_hosts("a\nb slots=3\n") == [HostSpec("a", 1), HostSpec("b", 3)]


@pytest.mark.parametrize(
    "line, why",
    [
        ("node1 slots=0", "positive integer"),
        ("node1 slots=-2", "positive integer"),
        ("node1 slots=four", "positive integer"),
        ("node1 slots=", "positive integer"),
        ("node1 cpus=4", "unexpected 'cpus=4'"),
        ("node1 4", "unexpected '4'"),
        ("node1 slots=2 slots=3", "given twice"),
        ("node1:2 slots=3", "given twice"),
        ("-oProxyCommand=evil slots=1", "not a host name"),
        ("node;rm slots=1", "not a host name"),
        ("node1 slots=99999", "implausibly large"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path: Path, line: str, why: str) -> None:
    f = tmp_path / "cluster.hosts"
    f.write_text(f"# fine\ngood slots=2\n\n{line}\n")
    with pytest.raises(HostfileError, match=rf"hostfile '.*cluster\.hosts', line 4: .*{why}"):
        parse_hostfile(f)


def test_list_errors_name_the_entry() -> None:
    with pytest.raises(HostfileError, match=r"hosts=, line 2: .*positive integer"):
        parse_hosts(["a", "b slots=0"], source="hosts=")


def test_empty_and_missing_files(tmp_path: Path) -> None:
    f = tmp_path / "empty"
    f.write_text("# nothing\n\n")
    with pytest.raises(HostfileError, match="names no host"):
        parse_hostfile(f)
    with pytest.raises(HostfileError, match="cannot read hostfile .*nope"):
        parse_hostfile(tmp_path / "nope")


def test_local_names() -> None:
    assert all(is_local(h) for h in ("localhost", "127.0.0.1", "::1", "me@localhost"))
    assert not any(is_local(h) for h in ("127.0.0.2", "node1", "localhost2"))


# -- where the hostfile comes from ----------------------------------------------------------------
def test_legacy_flag_parsing() -> None:
    assert argv_hostfile(["--dtmTCPhosts=h.txt", "x"]) == "h.txt"
    assert argv_hostfile(["-v", "--dtmTCPhosts", "h.txt"]) == "h.txt"
    assert argv_hostfile(["--other", "x"]) is None
    argv = ["script.py", "--dtmTCPhosts=h.txt", "--n", "3"]
    assert strip_argv_hostfile(argv) == "h.txt" and argv == ["script.py", "--n", "3"]
    argv = ["script.py", "--dtmTCPhosts", "h.txt"]
    assert strip_argv_hostfile(argv) == "h.txt" and argv == ["script.py"]


def test_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("ha slots=2\n")
    b.write_text("hb\n")
    monkeypatch.setattr(sys, "argv", ["prog"])
    monkeypatch.delenv(ENV_HOSTFILE, raising=False)
    assert resolve_hosts() is None
    monkeypatch.setenv(ENV_HOSTFILE, str(b))
    assert resolve_hosts() == [HostSpec("hb", 1)]
    monkeypatch.setattr(sys, "argv", ["prog", f"--dtmTCPhosts={a}"])
    assert resolve_hosts() == [HostSpec("ha", 2)]
    assert resolve_hosts(hostfile=b) == [HostSpec("hb", 1)]
    assert resolve_hosts(hosts=["x slots=3"]) == [HostSpec("x", 3)]
    with pytest.raises(ValueError, match="not both"):
        resolve_hosts(hostfile=a, hosts=["x"])


# -- local-only runs ----------------------------------------------------------------------------
@pytest.mark.timeout(120)
def test_localhost_hostfile_starts_local_workers_without_ssh(tmp_path: Path) -> None:
    f = tmp_path / "hosts"
    f.write_text("localhost slots=2\n127.0.0.1\n")
    # an ssh command that always fails proves ssh is never used
    with DTMExecutor(transport="tcp", hostfile=str(f), ssh_command="/bin/false") as ex:
        assert ex.max_workers == 3
        assert ex._pool.address[0] == "127.0.0.1"  # loopback only
        assert not any(ln.remote for ln in ex._pool._launches)
        assert list(ex.map(square, range(30))) == [x * x for x in range(30)]


@pytest.mark.timeout(60)
def test_bad_hostfile_fails_before_starting_anything(tmp_path: Path) -> None:
    f = tmp_path / "hosts"
    f.write_text("localhost slots=two\n")
    with pytest.raises(HostfileError, match="line 1"):
        DTMExecutor(transport="tcp", hostfile=str(f))


LEGACY_SCRIPT = """
import os, sys
from dtm_executor import DTMExecutor

def where(x):
    return os.environ.get("DTM_EXECUTOR_RANK")

if __name__ == "__main__":
    with DTMExecutor(transport="tcp") as ex:
        ranks = sorted(set(ex.map(where, range(40), chunksize=1)))
        print("workers", ex.max_workers, "address", ex._pool.address[0])
"""


@pytest.mark.timeout(120)
def test_legacy_dtmTCPhosts_flag(tmp_path: Path) -> None:
    hosts = tmp_path / "myHostFile"
    hosts.write_text("localhost slots=3\n")
    script = tmp_path / "legacy.py"
    script.write_text(LEGACY_SCRIPT)
    env = dict(os.environ)
    env.pop(ENV_HOSTFILE, None)
    r = subprocess.run([sys.executable, str(script), f"--dtmTCPhosts={hosts}"], capture_output=True,
                       text=True, timeout=90, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert "workers 3 address 127.0.0.1" in r.stdout

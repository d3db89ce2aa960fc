"""TCP transport across "hosts" through a real sshd on loopback addresses 127.0.0.2 and 127.0.0.3.

The fixture starts ``sshd -D -e`` as root on a free port with generated host and user keys and a
private ssh config, so ``ssh -F cfg 127.0.0.2`` works non-interactively. Without sshd (or root),
the tests skip and say why.
"""

from __future__ import annotations

import getpass
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from dtm_executor import BrokenDTMExecutor, DTMExecutor, current_executor

HOSTS = ("127.0.0.2", "127.0.0.3")


# -- tasks (module level: workers import this module by name) -----------------------------------
def square(x: int) -> int:
    return x * x


def fib(n: int) -> int:
    if n < 2:
        return n
    ex = current_executor()
    a = ex.submit(fib, n - 1)
    b = ex.submit(fib, n - 2)
    return a.result() + b.result()


class Boom(Exception):
    pass


def boom(msg: str) -> None:
    raise Boom(msg)


def where_barrier(dirname: str, n: int) -> tuple[str, int]:
    """Block (holding this worker) until ``n`` tasks have started, so each runs on its own worker;
    return the sshd address this worker was started through and its pid."""
    Path(dirname, str(os.getpid())).touch()
    end = time.monotonic() + 30
    while len(os.listdir(dirname)) < n and time.monotonic() < end:
        time.sleep(0.02)
    return os.environ.get("SSH_CONNECTION", "? ? local ?").split()[2], os.getpid()


def failing_init() -> None:
    raise RuntimeError("no licence on this node")


def to_stderr(text: str) -> int:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()
    return os.getpid()


# -- sshd fixture -------------------------------------------------------------------------------
def _children_of(pid: int) -> list[int]:
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
        if int(rest[1]) == pid and rest[0] not in ("Z", "X"):
            out.append(int(d))
    return out


def _descendants(pid: int) -> list[int]:
    out: list[int] = []
    todo = [pid]
    while todo:
        for c in _children_of(todo.pop()):
            out.append(c)
            todo.append(c)
    return out


def _free_port() -> int:
    for _ in range(50):
        with socket.socket() as a:
            a.bind((HOSTS[0], 0))
            port = a.getsockname()[1]
            try:
                with socket.socket() as b:
                    b.bind((HOSTS[1], port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port on both loopback addresses")


class Sshd:
    def __init__(self, root: Path, port: int, config: Path, proc: subprocess.Popen[bytes]) -> None:
        self.root = root
        self.port = port
        self.config = config
        self.proc = proc
        self.wrapped = False

    @property
    def ssh_command(self) -> str:
        return f"ssh -F {shlex.quote(str(self.config))}"

    def sessions(self) -> list[int]:
        """Processes sshd started for ssh sessions (not sshd's listener itself)."""
        top = [self.proc.pid]
        if self.wrapped:  # timeout(1) -> sshd listener -> sessions
            top = _children_of(self.proc.pid)
        return [p for t in top for p in _descendants(t)]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    exe = shutil.which("sshd") or ("/usr/sbin/sshd" if os.path.exists("/usr/sbin/sshd") else None)
    if exe is None or not shutil.which("ssh") or not shutil.which("ssh-keygen"):
        pytest.skip("openssh-server is not installed (apt-get install -y openssh-server)")
    if os.geteuid() != 0:
        pytest.skip("the loopback sshd fixture runs sshd as root")
    root = tmp_path_factory.mktemp("sshd")
    for name in ("host_key", "id_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / name)],
                       check=True, timeout=30)
    shutil.copy(root / "id_key.pub", root / "authorized_keys")
    port = _free_port()
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation directory
    cfg = root / "sshd_config"
    cfg.write_text(
        f"Port {port}\n"
        + "".join(f"ListenAddress {h}\n" for h in HOSTS)
        + f"HostKey {root / 'host_key'}\n"
        f"AuthorizedKeysFile {root / 'authorized_keys'}\n"
        "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPidFile none\n"
        "MaxStartups 50\nLogLevel ERROR\n"
    )
    hostkey = (root / "host_key.pub").read_text().split()
    (root / "known_hosts").write_text(
        "".join(f"[{h}]:{port} {hostkey[0]} {hostkey[1]}\n" for h in HOSTS)
    )
    client = root / "ssh_config"
    client.write_text(
        f"Host {' '.join(HOSTS)} 127.0.0.9\n"
        f"  Port {port}\n  User {getpass.getuser()}\n  IdentityFile {root / 'id_key'}\n"
        f"  IdentitiesOnly yes\n  UserKnownHostsFile {root / 'known_hosts'}\n"
        "  StrictHostKeyChecking yes\n  BatchMode yes\n  ConnectTimeout 10\n  LogLevel ERROR\n"
    )
    log = open(root / "sshd.log", "wb")
    cmd = [exe, "-f", str(cfg), "-D", "-e"]
    if shutil.which("timeout"):
        cmd = ["timeout", "1800", *cmd]  # never outlives a killed test run by much
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    server = Sshd(root, port, client, proc)
    server.wrapped = cmd[0] == "timeout"
    try:
        deadline = time.monotonic() + 15
        reason = None
        while True:
            if proc.poll() is not None:
                reason = f"sshd exited with status {proc.returncode}: {(root / 'sshd.log').read_text()[-500:]}"
                break
            try:
                socket.create_connection((HOSTS[1], port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    reason = "sshd did not start listening within 15 s"
                    break
                time.sleep(0.05)
        if reason is None:
            for h in HOSTS:
                r = subprocess.run(["ssh", "-F", str(client), h, "echo ok"], capture_output=True, timeout=30)
                if r.returncode != 0 or r.stdout.strip() != b"ok":
                    reason = f"ssh to {h} does not work: {r.stderr.decode(errors='replace')[-500:]}"
                    break
        if reason is not None:
            pytest.skip(f"no usable sshd on loopback: {reason}")
        yield server
    finally:
        # whatever sshd started for our sessions must be gone (workers exit on stdin EOF)
        deadline = time.monotonic() + 10
        while server.sessions() and time.monotonic() < deadline:
            time.sleep(0.1)
        left = server.sessions()
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()
        assert not left, f"processes left behind by ssh sessions: {left}"


@pytest.fixture
def hostfile(sshd: Sshd, tmp_path: Path) -> Path:
    p = tmp_path / "hosts.txt"
    p.write_text("# two loopback 'hosts'\n127.0.0.2 slots=2\n\n127.0.0.3 slots=1   # one slot\n")
    return p


def _shutdown(ex: DTMExecutor) -> None:
    ex.shutdown(wait=True, cancel_futures=True)


# -- tests --------------------------------------------------------------------------------------
@pytest.mark.timeout(120)
def test_core_scenarios_through_ssh(sshd: Sshd, hostfile: Path, tmp_path: Path) -> None:
    ex = DTMExecutor(transport="tcp", hostfile=str(hostfile), ssh_command=sshd.ssh_command)
    try:
        assert ex.max_workers == 3
        pool = ex._pool
        assert pool.hosts == {1: "127.0.0.2", 2: "127.0.0.2", 3: "127.0.0.3"}
        assert all(ln.remote for ln in pool._launches) and len(pool._launches) == 2  # one ssh per host
        # submit / map
        assert ex.submit(square, 12).result(timeout=30) == 144
        assert list(ex.map(square, range(50), timeout=30)) == [x * x for x in range(50)]
        # nested tasks at depth
        assert ex.submit(fib, 14).result(timeout=60) == 377
        # an exception keeps its type and carries the remote traceback
        with pytest.raises(Boom, match="remote failure") as info:
            ex.submit(boom, "remote failure").result(timeout=30)
        assert "boom" in str(info.value.__cause__)
        # a lambda goes by value
        assert ex.submit(lambda a, b: a * b + 1, 6, 7).result(timeout=30) == 43
        # every worker took part, each through the sshd address of its host
        barrier = tmp_path / "barrier"
        barrier.mkdir()
        futs = [ex.submit(where_barrier, str(barrier), 3) for _ in range(3)]
        got = sorted(f.result(timeout=60) for f in futs)
        assert sorted(addr for addr, _ in got) == ["127.0.0.2", "127.0.0.2", "127.0.0.3"]
        assert len({pid for _, pid in got}) == 3
    finally:
        _shutdown(ex)
    assert all(ln.proc.poll() is not None for ln in ex._pool._launches)


@pytest.mark.timeout(120)
def test_remote_stderr_reaches_the_user(sshd: Sshd, capfd: pytest.CaptureFixture[str]) -> None:
    ex = DTMExecutor(transport="tcp", hosts=["127.0.0.3"], ssh_command=sshd.ssh_command)
    try:
        ex.submit(to_stderr, "hello-from-the-remote-worker").result(timeout=30)
        seen = ""
        end = time.monotonic() + 15
        while "hello-from-the-remote-worker" not in seen and time.monotonic() < end:
            time.sleep(0.05)
            seen += capfd.readouterr().err
        assert "hello-from-the-remote-worker" in seen
    finally:
        _shutdown(ex)


@pytest.mark.timeout(120)
def test_secret_is_never_on_a_command_line(sshd: Sshd) -> None:
    ex = DTMExecutor(transport="tcp", hosts=["127.0.0.2 slots=1", "localhost"], ssh_command=sshd.ssh_command)
    try:
        assert ex.submit(square, 3).result(timeout=30) == 9
        secret = ex._pool.transport.listener._secret.hex().encode()
        pids = [ln.proc.pid for ln in ex._pool._launches] + sshd.sessions()
        assert len(pids) >= 4  # ssh, the local worker, and the remote session's processes
        for pid in pids:
            for what in ("cmdline", "environ"):
                try:
                    data = Path(f"/proc/{pid}/{what}").read_bytes()
                except OSError:
                    continue
                assert secret not in data, f"the secret appears in /proc/{pid}/{what}"
    finally:
        _shutdown(ex)


@pytest.mark.timeout(60)
def test_unreachable_host_fails_fast_naming_it(sshd: Sshd) -> None:
    t0 = time.monotonic()
    with pytest.raises(BrokenDTMExecutor, match=r"127\.0\.0\.9") as info:
        DTMExecutor(transport="tcp", hosts=["127.0.0.2 slots=1", "127.0.0.9 slots=2"],
                    ssh_command=sshd.ssh_command, connect_timeout=5)
    assert time.monotonic() - t0 < 20
    msg = str(info.value)
    assert "ranks 2, 3" in msg and "ssh" in msg
    assert "Connection refused" in msg  # ssh's own words are quoted


@pytest.mark.timeout(60)
def test_missing_remote_python_names_the_host(sshd: Sshd) -> None:
    with pytest.raises(BrokenDTMExecutor, match=r"host '127\.0\.0\.3' \(rank 1\)") as info:
        DTMExecutor(transport="tcp", hosts=["127.0.0.3"], ssh_command=sshd.ssh_command,
                    remote_python="/nonexistent/python3")
    assert "status 127" in str(info.value) and "/nonexistent/python3" in str(info.value)


@pytest.mark.timeout(60)
def test_worker_that_never_comes_up_times_out_naming_the_host(sshd: Sshd, tmp_path: Path) -> None:
    hang = tmp_path / "hang.sh"
    hang.write_text("#!/bin/sh\necho 'this python hangs' >&2\nexec cat >/dev/null\n")  # ends on stdin EOF
    hang.chmod(0o755)
    t0 = time.monotonic()
    with pytest.raises(BrokenDTMExecutor, match=r"host '127\.0\.0\.2' \(rank 1\).*within 3 s") as info:
        DTMExecutor(transport="tcp", hosts=["127.0.0.2"], ssh_command=sshd.ssh_command,
                    remote_python=str(hang), start_timeout=3)
    assert time.monotonic() - t0 < 15
    assert "this python hangs" in str(info.value)


@pytest.mark.timeout(60)
def test_ssh_options_and_remote_directory(sshd: Sshd, tmp_path: Path) -> None:
    ex = DTMExecutor(transport="tcp", hosts=["127.0.0.3 slots=2"],
                     ssh_command=["ssh", "-F", str(sshd.config), "-o", "ConnectTimeout=7"],
                     remote_dir=str(tmp_path), remote_python=shlex.quote(sys.executable))
    try:
        assert ex.submit(os.getcwd).result(timeout=30) == str(tmp_path)
        argv = ex._pool._launches[0].proc.args
        assert argv[:5] == ["ssh", "-F", str(sshd.config), "-o", "ConnectTimeout=7"]
        assert "BatchMode=yes" in argv
    finally:
        _shutdown(ex)


@pytest.mark.timeout(60)
def test_remote_initializer_failure_names_the_host(sshd: Sshd) -> None:
    ex = DTMExecutor(transport="tcp", hosts=["127.0.0.2"], ssh_command=sshd.ssh_command,
                     initializer=failing_init)
    try:
        with pytest.raises(BrokenDTMExecutor, match=r"(?s)could not start.*on host .*no licence on this node"):
            ex.submit(square, 2).result(timeout=30)
    finally:
        _shutdown(ex)

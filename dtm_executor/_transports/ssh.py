"""Starting TCP workers on other hosts through the system ssh, and the start-up configuration
every TCP worker reads (`read_config`).

One ssh connection per remote host (not per slot: sshd's ``MaxStartups`` refuses bursts of
connections) runs `host_main`, which starts the host's workers. The per-run secret, rank 0's
address and each worker's rank travel on standard input (through ssh's encrypted channel),
never on a command line or in the environment of other users' ``ps``. Standard input stays
open for the life of the run: when it closes (rank 0 killed its ssh, or died) the workers exit.
`tcp.TcpPool` starts these, forwards their standard error and quotes its tail in start-up
errors. Imports nothing from the package but the leaf `_errors` (never `tcp`: ssl is not needed
to start a host's workers).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any, NoReturn, Sequence

from .._errors import BrokenDTMExecutor

log = logging.getLogger("dtm_executor")

WORKER_BOOT = "from dtm_executor._transports.tcp import worker_main; worker_main()"
_HOST_BOOT = "from dtm_executor._transports.ssh import host_main; host_main()"
EXIT_NOCONNECT = 3  # a worker could not reach or authenticate with rank 0
_CONFIG_LIMIT = 1 << 16


def route_address(host: str) -> str | None:
    """The local address packets to ``host`` leave from (no packet is sent), or None."""
    name = host.rsplit("@", 1)[-1].strip("[]")
    try:
        infos = socket.getaddrinfo(name, 22, type=socket.SOCK_DGRAM)
    except (socket.gaierror, UnicodeError):
        return None  # maybe an alias of the ssh config: the worker uses $SSH_CONNECTION
    for family, _, _, _, sa in infos:
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.connect(sa)
                return str(s.getsockname()[0])
        except OSError:
            continue
    return None


def ssh_argv(ssh_command: str | Sequence[str], connect_timeout: float) -> list[str]:
    argv = shlex.split(ssh_command) if isinstance(ssh_command, str) else [str(a) for a in ssh_command]
    if not argv:
        raise ValueError("ssh_command is empty")
    if os.path.basename(argv[0]) == "ssh":
        # the user's own -o options come first and therefore win (ssh keeps the first value)
        argv += [
            "-T", "-x",
            "-o", "BatchMode=yes",
            "-o", f"ConnectTimeout={max(1, math.ceil(connect_timeout))}",
            "-o", "ServerAliveInterval=15",
            "-o", "ServerAliveCountMax=4",
            "--",
        ]
    return argv


def start_host(
    host: str, ranks: list[int], ssh_command: str | Sequence[str], remote_python: str | None,
    remote_dir: str | None, connect_timeout: float,
) -> subprocess.Popen[bytes]:
    """The ssh client that runs `host_main` on ``host`` (its standard input and error piped)."""
    py = remote_python or shlex.quote(sys.executable)
    rdir = remote_dir or os.getcwd()
    remote_cmd = f"cd {shlex.quote(rdir)} && exec {py} -c {shlex.quote(_HOST_BOOT)}"
    argv = ssh_argv(ssh_command, connect_timeout) + [host, remote_cmd]
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stderr=subprocess.PIPE, close_fds=True)
    except OSError as e:
        raise BrokenDTMExecutor(f"cannot run {argv[0]!r} to start workers on host {host!r}: {e}") from e
    log.debug("started workers %s on %s: %s", ranks, host, shlex.join(argv))
    return proc


# -- the remote side -----------------------------------------------------------------------------
def read_config() -> dict[str, Any]:
    line = sys.stdin.buffer.readline(_CONFIG_LIMIT)
    if not line.endswith(b"\n"):
        sys.stderr.write("dtm_executor: no start-up configuration on standard input\n")
        os._exit(2)
    cfg: dict[str, Any] = json.loads(line)
    if cfg.get("v") != 1:
        sys.stderr.write("dtm_executor: this worker's dtm_executor does not match rank 0's\n")
        os._exit(2)
    return cfg


def drain_stdin() -> None:
    try:
        while sys.stdin.buffer.read1(4096):  # type: ignore[union-attr]
            pass
    except (OSError, ValueError):
        pass


def host_main() -> None:
    """Entry point run by ssh on a remote host: start its workers and watch them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    cfg = read_config()
    ranks = cfg.pop("ranks")
    children: list[subprocess.Popen[bytes]] = []
    for r in ranks:
        env = dict(os.environ)
        env["DTM_EXECUTOR_RANK"] = str(r)
        p = subprocess.Popen([sys.executable, "-c", WORKER_BOOT], stdin=subprocess.PIPE, env=env, close_fds=True)
        assert p.stdin is not None
        p.stdin.write(json.dumps(dict(cfg, rank=r)).encode() + b"\n")
        p.stdin.flush()
        children.append(p)
    eof = threading.Event()

    def watch() -> None:
        drain_stdin()
        eof.set()

    threading.Thread(target=watch, daemon=True).start()
    code = 0
    while not eof.is_set():
        states = [p.poll() for p in children]
        if EXIT_NOCONNECT in states:
            code = EXIT_NOCONNECT
            break
        if all(c is not None for c in states):
            code = next((c for c in states if c), 0)  # type: ignore[assignment]
            break
        eof.wait(0.1)
    for p in children:
        try:
            if p.stdin is not None:
                p.stdin.close()  # the worker exits on EOF
        except OSError:
            pass
    end = time.monotonic() + 2.0
    for p in children:
        try:
            p.wait(max(0.0, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    flush_exit(code)


def flush_exit(code: int) -> NoReturn:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001
            pass
    os._exit(code)


def ssh_client_address() -> str | None:
    words = os.environ.get("SSH_CONNECTION", "").split()
    return words[0] if words else None

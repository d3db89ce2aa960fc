"""Starting TCP workers: on this machine as subprocesses, on other hosts through the system ssh.

One ssh connection per remote host (not per slot: sshd's ``MaxStartups`` refuses bursts of
connections) runs `host_main`, which starts the host's workers. The per-run secret, rank 0's
address and each worker's rank travel on standard input (through ssh's encrypted channel),
never on a command line or in the environment of other users' ``ps``. Standard input stays
open for the life of the run: when it closes (rank 0 killed its ssh, or died) the workers exit.
Remote standard error is forwarded to this process's ``sys.stderr`` and its tail quoted in
start-up errors; standard output is inherited.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import os
import pickle
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Sequence

from .. import _hostfile
from .._errors import BrokenDTMExecutor
from . import tcp as _tcp
from .._hostfile import HostSpec
from .framing import FrameError

log = logging.getLogger("dtm_executor")

_WORKER_BOOT = "from dtm_executor._transports.ssh import tcp_worker_main; tcp_worker_main()"
_HOST_BOOT = "from dtm_executor._transports.ssh import host_main; host_main()"
_EXIT_NOCONNECT = 3  # a worker could not reach or authenticate with rank 0
_CONFIG_LIMIT = 1 << 16


class _Launch:
    """One started process: a local worker, or the ssh client of one remote host."""

    def __init__(self, host: str, ranks: list[int], proc: subprocess.Popen[bytes], remote: bool) -> None:
        self.host = host
        self.ranks = ranks
        self.proc = proc
        self.remote = remote
        self.tail: collections.deque[bytes] = collections.deque(maxlen=64)
        self.forwarder = threading.Thread(target=self._forward, name="dtm-stderr", daemon=True)
        self.forwarder.start()

    def _forward(self) -> None:
        """Copy the process's stderr to ours as it comes, keeping the end for error messages."""
        pipe = self.proc.stderr
        assert pipe is not None
        fd = pipe.fileno()
        while True:
            try:
                data = os.read(fd, 65536)
            except OSError:
                break
            if not data:
                break
            self.tail.append(data)
            try:
                sys.stderr.write(data.decode("utf-8", "replace"))
                sys.stderr.flush()
            except Exception:  # noqa: BLE001 - a closed or replaced stderr must not kill us
                pass
        try:
            pipe.close()
        except OSError:
            pass

    def last_output(self, limit: int = 2000) -> str:
        text = b"".join(self.tail).decode("utf-8", "replace").strip()
        if len(text) > limit:
            text = "..." + text[-limit:]
        return text

    def send_config(self, cfg: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(cfg).encode() + b"\n")
            self.proc.stdin.flush()
        except OSError:
            pass  # it died already: reported by the start-up check

    def close_stdin(self) -> None:
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        except OSError:
            pass


def _route_address(host: str) -> str | None:
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


def _ssh_argv(ssh_command: str | Sequence[str], connect_timeout: float) -> list[str]:
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


def _pop(options: dict[str, Any], key: str, default: Any = None) -> Any:
    return options.pop(key, default)


class TcpPool:
    """The workers of one ``transport="tcp"`` executor, and rank 0's listening socket.

    Keyword options (popped from ``options``): ``hostfile``, ``hosts``, ``ssh_command`` (str or
    argv list, default ``"ssh"``), ``remote_python`` (shell text, default this interpreter's
    path), ``remote_dir`` (default the current directory), ``tls_cert``, ``tls_key``, ``tls_ca``,
    ``connect_timeout`` (ssh and TCP connects, default 10 s), ``start_timeout`` (until every
    worker has authenticated, default 60 s), ``listen_address`` and ``port`` (what rank 0 binds
    and workers connect to), ``max_frame_bytes``.
    """

    def __init__(
        self, max_workers: int, opts: dict[str, Any], init_blob: bytes, options: dict[str, Any]
    ) -> None:
        hostfile = _pop(options, "hostfile")
        hosts = _pop(options, "hosts")
        ssh_command = _pop(options, "ssh_command", "ssh")
        remote_python = _pop(options, "remote_python")
        remote_dir = _pop(options, "remote_dir")
        tls_cert = _pop(options, "tls_cert")
        tls_key = _pop(options, "tls_key")
        tls_ca = _pop(options, "tls_ca")
        self.connect_timeout = float(_pop(options, "connect_timeout", 10.0))
        self.start_timeout = float(_pop(options, "start_timeout", 60.0))
        handshake_timeout = float(_pop(options, "handshake_timeout", 10.0))
        listen_address = _pop(options, "listen_address")
        port = int(_pop(options, "port", 0))
        max_frame_bytes = int(_pop(options, "max_frame_bytes", _tcp.DEFAULT_MAX_FRAME_BYTES))
        if (tls_key or tls_ca) and not tls_cert:
            raise ValueError("tls_key= and tls_ca= need tls_cert=")

        specs = _hostfile.resolve_hosts(hostfile, hosts)
        if specs is None:
            specs = [HostSpec("localhost", max_workers)]
        elif max_workers != sum(s.slots for s in specs):
            log.debug("tcp transport: the hosts define %d workers", sum(s.slots for s in specs))
        self.specs = specs
        nworkers = sum(s.slots for s in specs)
        self.workers = list(range(1, nworkers + 1))
        self.local_worker = False
        self.hosts: dict[int, str] = {}
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self._launches: list[_Launch] = []
        self._by_rank: dict[int, _Launch] = {}
        self._cv = threading.Condition()
        self._chans: dict[int, _tcp.TcpChannel] = {}
        self._failed = False

        remote = [s.host for s in specs if not s.is_local]
        route = {h: _route_address(h) for h in remote}
        if listen_address:
            bind = listen_address
        elif not remote:
            bind = "127.0.0.1"  # local-only runs never listen beyond loopback
        else:
            known = set(route.values())
            if None not in known and len(known) == 1:
                bind = known.pop()  # type: ignore[assignment]
            elif any(a and ":" in a for a in known):
                bind = "::"
            else:
                bind = "0.0.0.0"
        local_addr = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(bind, bind)

        tls_files = None
        server_ctx = None
        if tls_cert:
            tls_files = {k: os.path.abspath(v) for k, v in
                         (("cert", tls_cert), ("key", tls_key), ("ca", tls_ca)) if v}
            server_ctx = _tcp.server_context(tls_files["cert"], tls_files.get("key"), tls_files.get("ca"))
            _tcp.client_context(**tls_files)  # fail here, not on every worker, if files are bad

        secret = os.urandom(32)  # per run; only ever written to the workers' standard input
        self.transport = _tcp.TcpHubTransport(nworkers + 1)
        try:
            listener = _tcp.Listener(
                secret, bind, port, on_auth=self._on_auth, tls=server_ctx,
                handshake_timeout=handshake_timeout, max_frame_bytes=max_frame_bytes,
            )
        except OSError as e:
            self.transport.close()
            raise BrokenDTMExecutor(f"cannot listen on {bind}:{port}: {e}") from e
        self.transport.listener = listener
        self.address = listener.address
        listener.expect(self.workers)

        try:
            from .. import _serial

            prep = _serial.preparation_data("dtm-worker")  # no authkey; no "<stdin>" to import
        except Exception:  # noqa: BLE001 - unusual __main__; workers then skip importing it
            prep = None
        head = pickle.dumps((nworkers + 1, prep, opts), 5)
        remote_head = head
        if prep is not None and remote_dir:
            remote_head = pickle.dumps((nworkers + 1, dict(prep, dir=remote_dir), opts), 5)

        self._lock = threading.Lock()
        self._closed = False
        self._replacing = True
        self._next_rank = nworkers + 1
        self._replace_ctx = (prep, opts, init_blob, ssh_command, remote_python, remote_dir,
                             listen_address, route, local_addr)
        base = {
            "v": 1,
            "port": self.address[1],
            "secret": secret.hex(),
            "tls": tls_files,
            "connect_timeout": self.connect_timeout,
            "handshake_timeout": handshake_timeout,
            "start_timeout": self.start_timeout,
            "max_frame_bytes": max_frame_bytes,
        }
        self._base = base
        try:
            rank = 1
            for spec in specs:
                ranks = list(range(rank, rank + spec.slots))
                rank += spec.slots
                for r in ranks:
                    self.hosts[r] = spec.host
                if spec.is_local:
                    for r in ranks:
                        launch = self._start_local(r)
                        launch.send_config(dict(base, host=local_addr, rank=r))
                else:
                    launch = self._start_remote(spec.host, ranks, ssh_command, remote_python, remote_dir)
                    launch.send_config(dict(base, host=listen_address or route[spec.host], ranks=ranks))
            self._wait_started(BrokenDTMExecutor)
            for r in self.workers:
                ch = self._chans[r]
                try:
                    h = head if self._by_rank[r].remote is False else remote_head
                    ch.send(0, [pickle.dumps(r), h, init_blob])
                except (OSError, FrameError):
                    pass  # its loss is reported by the transport
                self.transport.add(r, ch)
        except BaseException:
            with self._cv:
                self._failed = True
            self.kill()
            for ch in self._chans.values():
                ch.close()
            self.transport.close()
            raise

    # -- replacing a lost worker -------------------------------------------------------------
    def replace(
        self,
        dead: int,
        workers: list[int],
        call_soon: Callable[[Callable[[], None]], None],
        on_ready: Callable[[int], None],
        on_failed: Callable[[int, str], None],
    ) -> int | None:
        """Start a worker (a new rank) on the host of ``dead``; None if we no longer replace.

        The start (ssh, connect, authenticate) runs in a thread of its own; the new rank joins
        on the communication thread (``call_soon``), before its first request can arrive.
        """
        with self._lock:
            if self._closed or not self._replacing:
                return None
            rank = self._next_rank
            self._next_rank += 1
        host = self.hosts.get(dead, "localhost")
        self.hosts[rank] = host
        live = [w for w in workers if w != dead] + [rank]
        threading.Thread(target=self._start_replacement, name=f"dtm-replace-{rank}", daemon=True,
                         args=(rank, host, live, call_soon, on_ready, on_failed)).start()
        return rank

    def _start_replacement(
        self, rank: int, host: str, live: list[int], call_soon: Callable[[Callable[[], None]], None],
        on_ready: Callable[[int], None], on_failed: Callable[[int, str], None],
    ) -> None:
        prep, opts, init_blob, ssh_command, remote_python, remote_dir, listen_address, route, local_addr = (
            self._replace_ctx)
        opts = dict(opts, workers=live)
        listener = self.transport.listener
        try:
            assert listener is not None
            listener.expect([rank])
            spec_local = _hostfile.is_local(host)
            with self._lock:
                if self._closed:
                    return
                if spec_local:
                    launch = self._start_local(rank)
                    launch.send_config(dict(self._base, host=local_addr, rank=rank))
                else:
                    launch = self._start_remote(host, [rank], ssh_command, remote_python, remote_dir)
                    launch.send_config(dict(self._base, host=listen_address or route.get(host), ranks=[rank]))
            deadline = time.monotonic() + self.start_timeout
            with self._cv:
                while rank not in self._chans and not self._closed:
                    if launch.proc.poll() is not None or time.monotonic() >= deadline:
                        raise OSError(self._describe_failure(launch))
                    self._cv.wait(0.05)
                ch = self._chans.get(rank)
            if ch is None:
                return  # shut down meanwhile
            p = prep if not launch.remote or not remote_dir or prep is None else dict(prep, dir=remote_dir)
            ch.send(0, [pickle.dumps(rank), pickle.dumps((rank + 1, p, opts), 5), init_blob])
        except Exception as e:  # noqa: BLE001 - reported on the communication thread
            text = str(e) if isinstance(e, OSError) else f"{type(e).__name__}: {e}"
            call_soon(lambda: on_failed(rank, text))
            return

        def join() -> None:
            on_ready(rank)
            self.transport.add(rank, ch)

        call_soon(join)

    def stop_replacing(self, rank: int) -> None:
        with self._lock:
            self._replacing = False

    # -- starting ------------------------------------------------------------------------
    def _start_local(self, rank: int) -> _Launch:
        env = dict(os.environ)
        env["DTM_EXECUTOR_RANK"] = str(rank)
        cmd = [sys.executable, *subprocess._args_from_interpreter_flags(), "-c", _WORKER_BOOT]  # type: ignore[attr-defined]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE, env=env, close_fds=True)
        return self._track(_Launch("localhost", [rank], proc, remote=False))

    def _start_remote(
        self, host: str, ranks: list[int], ssh_command: Any, remote_python: str | None, remote_dir: str | None
    ) -> _Launch:
        py = remote_python or shlex.quote(sys.executable)
        rdir = remote_dir or os.getcwd()
        remote_cmd = f"cd {shlex.quote(rdir)} && exec {py} -c {shlex.quote(_HOST_BOOT)}"
        argv = _ssh_argv(ssh_command, self.connect_timeout) + [host, remote_cmd]
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stderr=subprocess.PIPE, close_fds=True)
        except OSError as e:
            raise BrokenDTMExecutor(f"cannot run {argv[0]!r} to start workers on host {host!r}: {e}") from e
        log.debug("started workers %s on %s: %s", ranks, host, shlex.join(argv))
        return self._track(_Launch(host, ranks, proc, remote=True))

    def _track(self, launch: _Launch) -> _Launch:
        self._launches.append(launch)
        for r in launch.ranks:
            self._by_rank[r] = launch
            self.procs[r] = launch.proc
        return launch

    def _on_auth(self, rank: int, ch: _tcp.TcpChannel, addr: Any) -> None:
        with self._cv:
            if self._failed:
                ch.close()
                return
            self._chans[rank] = ch
            self._cv.notify_all()
        log.debug("worker rank %d connected from %s", rank, addr)

    def _wait_started(self, error: type[BaseException]) -> None:
        deadline = time.monotonic() + self.start_timeout
        with self._cv:
            while True:
                waiting = [ln for ln in self._launches if any(r not in self._chans for r in ln.ranks)]
                if not waiting:
                    return
                dead = [ln for ln in waiting if ln.proc.poll() is not None]
                if dead or time.monotonic() >= deadline:
                    self._failed = True
                    break
                self._cv.wait(0.05)
        parts = []
        for ln in dead or waiting:
            if dead:
                for _ in range(20):  # let its last words arrive
                    if not ln.forwarder.is_alive():
                        break
                    ln.forwarder.join(0.05)
            parts.append(self._describe_failure(ln))
        raise error("could not start the TCP workers: " + "\n".join(parts))

    def _describe_failure(self, ln: _Launch) -> str:
        missing = [r for r in ln.ranks if r not in self._chans]
        who = f"host {ln.host!r} (rank{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))})"
        code = ln.proc.poll()
        if code is None:
            msg = f"{who}: the worker did not connect back within {self.start_timeout:g} s"
        elif ln.remote and code == 255:
            msg = f"{who}: ssh could not reach the host or log in (exit status 255)"
        elif code == _EXIT_NOCONNECT:
            msg = f"{who}: the worker could not connect back to rank 0 (port {self.address[1]})"
        else:
            launcher = "ssh" if ln.remote else "the worker process"
            msg = f"{who}: {launcher} exited with status {code} before the worker connected"
        out = ln.last_output()
        if out:
            msg += "; its stderr ends with:\n    " + out.replace("\n", "\n    ")
        return msg

    # -- pool interface ------------------------------------------------------------------
    def describe(self, rank: int) -> str:
        ln = self._by_rank.get(rank)
        if ln is None:
            return f"rank {rank}"
        how = "ssh pid" if ln.remote else "pid"
        return f"rank {rank} on host {ln.host!r} ({how} {ln.proc.pid})"

    def exit_status(self, rank: int) -> int | None:
        ln = self._by_rank.get(rank)
        if ln is None:
            return None
        try:
            return ln.proc.wait(0.5)
        except subprocess.TimeoutExpired:
            return None

    def join(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        for ln in list(self._launches):
            try:
                ln.proc.wait(max(0.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def kill(self) -> None:
        """Close every worker's standard input (they exit on EOF), then end what is left."""
        with self._lock:
            self._closed = True
        with self._cv:
            self._cv.notify_all()
        for ln in list(self._launches):
            ln.close_stdin()
        end = time.monotonic() + 1.0
        for ln in list(self._launches):
            try:
                ln.proc.wait(max(0.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for sig in (signal.SIGTERM, signal.SIGKILL):
            alive = [ln for ln in self._launches if ln.proc.poll() is None]
            for ln in alive:
                try:
                    ln.proc.send_signal(sig)
                except OSError:
                    pass
            for ln in alive:
                try:
                    ln.proc.wait(2.0)
                except subprocess.TimeoutExpired:
                    pass
        for ln in list(self._launches):
            ln.forwarder.join(1.0)


# -- the remote side -----------------------------------------------------------------------------
def _read_config() -> dict[str, Any]:
    line = sys.stdin.buffer.readline(_CONFIG_LIMIT)
    if not line.endswith(b"\n"):
        sys.stderr.write("dtm_executor: no start-up configuration on standard input\n")
        os._exit(2)
    cfg: dict[str, Any] = json.loads(line)
    if cfg.get("v") != 1:
        sys.stderr.write("dtm_executor: this worker's dtm_executor does not match rank 0's\n")
        os._exit(2)
    return cfg


def _drain_stdin() -> None:
    try:
        while sys.stdin.buffer.read1(4096):  # type: ignore[union-attr]
            pass
    except (OSError, ValueError):
        pass


def host_main() -> None:
    """Entry point run by ssh on a remote host: start its workers and watch them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    cfg = _read_config()
    ranks = cfg.pop("ranks")
    children: list[subprocess.Popen[bytes]] = []
    for r in ranks:
        env = dict(os.environ)
        env["DTM_EXECUTOR_RANK"] = str(r)
        p = subprocess.Popen([sys.executable, "-c", _WORKER_BOOT], stdin=subprocess.PIPE, env=env, close_fds=True)
        assert p.stdin is not None
        p.stdin.write(json.dumps(dict(cfg, rank=r)).encode() + b"\n")
        p.stdin.flush()
        children.append(p)
    eof = threading.Event()

    def watch() -> None:
        _drain_stdin()
        eof.set()

    threading.Thread(target=watch, daemon=True).start()
    code = 0
    while not eof.is_set():
        states = [p.poll() for p in children]
        if _EXIT_NOCONNECT in states:
            code = _EXIT_NOCONNECT
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
    _flush_exit(code)


def _flush_exit(code: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001
            pass
    os._exit(code)


def _ssh_client_address() -> str | None:
    words = os.environ.get("SSH_CONNECTION", "").split()
    return words[0] if words else None


def tcp_worker_main() -> None:
    """Entry point of a TCP worker: read the configuration, connect, authenticate, then serve."""
    from . import local as _local

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is rank 0's to handle
    cfg = _read_config()
    rank = int(cfg["rank"])

    def watch() -> None:
        _drain_stdin()
        _local._exit_now(0)  # whoever started us is gone

    threading.Thread(target=watch, name="dtm-stdin", daemon=True).start()
    host = cfg.get("host") or _ssh_client_address()
    port = int(cfg["port"])
    try:
        if not host:
            raise OSError("no address for rank 0 (give listen_address=)")
        tls = _tcp.client_context(**cfg["tls"]) if cfg.get("tls") else None
        ch = _tcp.connect(
            host, port, bytes.fromhex(cfg["secret"]), rank, tls=tls,
            connect_timeout=float(cfg["connect_timeout"]),
            handshake_timeout=float(cfg["handshake_timeout"]),
            max_frame_bytes=int(cfg["max_frame_bytes"]),
            retry_for=float(cfg.get("start_timeout", cfg["connect_timeout"])),  # as long as rank 0 waits
        )
    except Exception as e:  # noqa: BLE001 - reported on stderr, which reaches rank 0's user
        sys.stderr.write(
            f"dtm_executor: worker rank {rank} on {socket.gethostname()} cannot connect to rank 0 "
            f"at {host}:{port}: {type(e).__name__}: {e}\n"
        )
        _flush_exit(_EXIT_NOCONNECT)
    del cfg
    try:
        _, frames = ch.recv_blocking()
    except (EOFError, OSError, FrameError):
        _flush_exit(0)
    from .. import _runtime

    def report(text: str) -> None:
        ch.send(0, [pickle.dumps((_runtime.INITFAIL, text))])

    _local.serve(frames, report, lambda rank, size: _tcp.TcpWorkerTransport(ch, rank, size),
                 where=f"(on host {socket.gethostname()})\n")

"""Hostfiles in MPI syntax: which hosts take part in a TCP run, and how many workers each runs.

One host per line: ``host slots=N`` (Open MPI style), ``host:N`` (MPICH style) or ``host`` alone
(one slot); ``#`` starts a comment; blank lines are ignored; a host named on several lines gets
the sum of its slots. ``user@host`` is passed to ssh as is. A malformed line is an error that
names the file and the line, because a silently misread hostfile runs the wrong cluster.

A leaf: imports no other module of the package.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from typing import Iterable, Sequence

#: Hosts started as plain local processes, without ssh (as DTM did for ``localhost``).
_LOCAL_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]", "localhost.localdomain"})

#: Environment variable through which the ``python -m dtm_executor --hostfile FILE`` launcher
#: hands its hostfile to the executor.
ENV_HOSTFILE = "DTM_EXECUTOR_HOSTFILE"

_LEGACY_FLAG = "--dtmTCPhosts"

# A host must never look like an ssh option (a leading "-" would be option injection).
_HOST_RE = re.compile(
    r"^(?:[A-Za-z0-9_][A-Za-z0-9._+-]*@)?"  # optional user@
    r"(?:[A-Za-z0-9_][A-Za-z0-9._-]*|\[[0-9A-Fa-f:.%A-Za-z]+\]|[0-9A-Fa-f]*:[0-9A-Fa-f:.]+)$"
)
_KEYS = ("slots", "max_slots", "max-slots")


class HostfileError(ValueError):
    """A hostfile (or ``hosts=`` list) that cannot be understood; the message names the line."""


@dataclass(frozen=True)
class HostSpec:
    """One host of a run and the number of workers it runs."""

    host: str
    slots: int

    @property
    def is_local(self) -> bool:
        return is_local(self.host)


def is_local(host: str) -> bool:
    """True for the names that mean "this machine" without ssh (``localhost`` and loopback)."""
    name = host.rsplit("@", 1)[-1].lower()
    return name in _LOCAL_NAMES


def parse_hosts(lines: Iterable[str] | str, source: str = "hosts") -> list[HostSpec]:
    """Parse hostfile lines; ``source`` names where they come from in error messages."""
    if isinstance(lines, str):
        lines = lines.splitlines()
    order: list[str] = []
    slots: dict[str, int] = {}
    for lineno, raw in enumerate(lines, 1):
        if not isinstance(raw, str):
            raise HostfileError(f"{source}, line {lineno}: expected a string, not {type(raw).__name__}")
        host, n = _parse_line(raw, source, lineno)
        if host is None:
            continue
        if host not in slots:
            order.append(host)
            slots[host] = 0
        slots[host] += n
    if not order:
        raise HostfileError(f"{source} names no host")
    return [HostSpec(h, slots[h]) for h in order]


def parse_hostfile(path: str | os.PathLike[str]) -> list[HostSpec]:
    """Read and parse a hostfile; errors name the file and the line."""
    name = os.fspath(path)
    try:
        with open(name, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise HostfileError(f"cannot read hostfile {name!r}: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise HostfileError(f"hostfile {name!r} is not UTF-8 text: {e}") from e
    return parse_hosts(text.splitlines(), source=f"hostfile {name!r}")


def _parse_line(raw: str, source: str, lineno: int) -> tuple[str | None, int]:
    line = raw.split("#", 1)[0].strip()
    if not line:
        return None, 0
    where = f"{source}, line {lineno}"
    words = line.split()
    host = words[0]
    n: int | None = None
    mpich = re.fullmatch(r"([^:\[\]]+):(\d+)", host)  # host:N, but not an IPv6 address
    if mpich:
        host, n = mpich.group(1), _count(mpich.group(2), where, raw)
    if not _HOST_RE.match(host):
        raise HostfileError(f"{where}: {host!r} is not a host name or address: {raw.strip()!r}")
    seen: set[str] = set()
    for word in words[1:]:
        key, eq, value = word.partition("=")
        if not eq:
            key, eq, value = word.partition(":")  # "slots:4" is accepted by some MPIs
        key = key.lower()
        if not eq or key not in _KEYS:
            raise HostfileError(
                f"{where}: unexpected {word!r} (expected 'host', 'host slots=N' or 'host:N'): {raw.strip()!r}"
            )
        canon = "max_slots" if key == "max-slots" else key
        if canon in seen:
            raise HostfileError(f"{where}: {canon} given twice: {raw.strip()!r}")
        seen.add(canon)
        count = _count(value, where, raw)
        if canon == "slots":
            if n is not None:
                raise HostfileError(f"{where}: the slot count is given twice: {raw.strip()!r}")
            n = count
        # max_slots only bounds oversubscription in MPI; workers never oversubscribe here.
    return host, (1 if n is None else n)


def _count(value: str, where: str, raw: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise HostfileError(f"{where}: slot count {value!r} is not a positive integer: {raw.strip()!r}")
    n = int(value)
    if n > 4096:
        raise HostfileError(f"{where}: slot count {n} is implausibly large: {raw.strip()!r}")
    return n


def argv_hostfile(argv: Sequence[str] | None = None) -> str | None:
    """The hostfile named by the legacy ``--dtmTCPhosts=FILE`` (or ``--dtmTCPhosts FILE``) flag.

    Looks in ``sys.argv`` by default and leaves it unchanged (the user's script may parse its
    own arguments; DTM left the flag in place too).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    for i, a in enumerate(args):
        if a.startswith(_LEGACY_FLAG + "="):
            return a[len(_LEGACY_FLAG) + 1 :] or None
        if a == _LEGACY_FLAG:
            return args[i + 1] if i + 1 < len(args) else None
    return None


def strip_argv_hostfile(argv: list[str]) -> str | None:
    """Remove the legacy flag (and its value) from ``argv`` in place; return the hostfile."""
    for i, a in enumerate(argv):
        if a.startswith(_LEGACY_FLAG + "="):
            del argv[i]
            return a[len(_LEGACY_FLAG) + 1 :] or None
        if a == _LEGACY_FLAG:
            value = argv[i + 1] if i + 1 < len(argv) else None
            del argv[i : i + 2]
            return value
    return None


def resolve_hosts(
    hostfile: str | os.PathLike[str] | None = None,
    hosts: Iterable[str] | str | None = None,
) -> list[HostSpec] | None:
    """The hosts of a run: ``hosts=``, else ``hostfile=``, else ``--dtmTCPhosts=`` in ``sys.argv``,
    else the launcher's ``DTM_EXECUTOR_HOSTFILE``; ``None`` when none of them is given."""
    if hosts is not None and hostfile is not None:
        raise ValueError("give either hostfile= or hosts=, not both")
    if hosts is not None:
        return parse_hosts(hosts, source="hosts=")
    if hostfile is None:
        hostfile = argv_hostfile() or os.environ.get(ENV_HOSTFILE) or None
    if hostfile is None:
        return None
    return parse_hostfile(hostfile)

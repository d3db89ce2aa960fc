"""Logging rules of the package (logger ``dtm_executor``).

* User data (exception messages, values, names from the network) enters a log line only through
  `brief`/`brief_exc`: at most `MAX_CHARS` characters, computed only if the line is emitted. A
  100 MB exception message must not become a 100 MB log line.
* Events that can repeat thousands of times go through `Every`: one line per interval, saying how
  many were left out.

A leaf: imports no other module of the package.
"""

from __future__ import annotations

import logging
import reprlib
import threading
import time
from typing import Any

log = logging.getLogger("dtm_executor")

#: the most characters of user data one log line may carry
MAX_CHARS = 200

_repr = reprlib.Repr()
_repr.maxstring = MAX_CHARS
_repr.maxother = MAX_CHARS
_repr.maxlong = 60


def _cut(text: str, limit: int = MAX_CHARS) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... [{len(text):,} characters in all]"


def _safe(fn: Any, obj: Any) -> str:
    try:
        return str(fn(obj))
    except Exception as e:  # noqa: BLE001 - a broken __str__/__repr__ must not break logging
        return f"<{type(obj).__name__}: unprintable ({type(e).__name__})>"


class _Brief:
    """Formats lazily: the cost is paid only if a handler emits the line."""

    __slots__ = ("obj", "how")

    def __init__(self, obj: Any, how: str) -> None:
        self.obj = obj
        self.how = how

    def __str__(self) -> str:
        obj = self.obj
        if self.how == "repr":
            return _cut(_safe(_repr.repr, obj))
        if self.how == "exc":
            msg = _cut(_safe(str, obj))
            return f"{type(obj).__name__}: {msg}" if msg else type(obj).__name__
        return _cut(_safe(str, obj))

    __repr__ = __str__


def brief(obj: Any) -> _Brief:
    """``str(obj)``, cut to `MAX_CHARS`: for ``%s`` in a log call."""
    return _Brief(obj, "str")


def brief_repr(obj: Any) -> _Brief:
    """``repr(obj)`` with bounded cost and length (`reprlib`)."""
    return _Brief(obj, "repr")


def brief_exc(exc: BaseException) -> _Brief:
    """``"TypeName: message"`` with the message cut to `MAX_CHARS`."""
    return _Brief(exc, "exc")


class Every:
    """Rate limit for a log line that may repeat (one per connection, per message...): the first
    is logged, then at most one per ``interval`` seconds, with the count of those left out."""

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self._lock = threading.Lock()
        self._next = 0.0
        self._skipped = 0

    def __call__(self, level: int, msg: str, *args: Any) -> None:
        if not log.isEnabledFor(level):
            return
        now = time.monotonic()
        with self._lock:
            if now < self._next:
                self._skipped += 1
                return
            skipped, self._skipped = self._skipped, 0
            self._next = now + self.interval
        if skipped:
            msg += " (%d more like this in the last %.0f s were not logged)"
            args = (*args, skipped, self.interval)
        log.log(level, msg, *args)

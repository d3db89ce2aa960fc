"""Progress of long ``map`` runs (``DTMExecutor(progress=True)``).

With tqdm installed (the ``progress`` extra) each map shows a bar; without it, progress goes to
the ``dtm_executor`` logger at INFO level every `LOG_INTERVAL` seconds and once at the end, so a
batch job's log still says how far it got. Items count as done when their chunk's results reach
the consumer of the map (the map reads only a bounded window ahead, so this is also how far the
computation is).

A leaf: imports no other module of the package (tqdm when a bar is drawn).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Protocol

log = logging.getLogger("dtm_executor")

#: Seconds between two progress lines of the logging fallback.
LOG_INTERVAL = 5.0

_warned = [False]


class Bar(Protocol):
    def update(self, n: int) -> None: ...

    def close(self) -> None: ...


def _tqdm_class() -> Callable[..., Any] | None:
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm


def _describe(fn: Any) -> str:
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__
    return f"map({name})"


def start(fn: Any, total: int | None) -> Bar:
    """A progress bar for a map of ``fn`` over ``total`` items (None: length unknown)."""
    desc = _describe(fn)
    tqdm = _tqdm_class()
    if tqdm is not None:
        return tqdm(total=total, desc=desc, unit="item", dynamic_ncols=True)
    if not _warned[0] and not log.isEnabledFor(logging.INFO):
        _warned[0] = True
        log.warning(
            "progress=True: tqdm is not installed (pip install 'dtm_executor[progress]') and the "
            "'dtm_executor' logger does not show INFO messages, so map progress is not visible; "
            "install tqdm or call logging.basicConfig(level=logging.INFO)"
        )
    return _LogBar(desc, total)


class _LogBar:
    """The fallback: a log line every `LOG_INTERVAL` seconds, and one at the end."""

    def __init__(self, desc: str, total: int | None) -> None:
        self.desc = desc
        self.total = total
        self.done = 0
        self.t0 = self.last = time.monotonic()
        self.closed = False

    def _counts(self) -> str:
        if self.total is None:
            return f"{self.done} items"
        pct = 100.0 * self.done / self.total if self.total else 100.0
        return f"{self.done}/{self.total} items ({pct:.0f}%)"

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last < LOG_INTERVAL:
            return
        self.last = now
        elapsed = now - self.t0
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = ""
        if self.total is not None and rate > 0 and self.done < self.total:
            eta = f", about {(self.total - self.done) / rate:.0f} s left"
        log.info("%s: %s done, %.1f items/s%s", self.desc, self._counts(), rate, eta)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        elapsed = time.monotonic() - self.t0
        stopped = self.total is not None and self.done < self.total  # an error, or abandoned
        log.info("%s: %s done%s in %.1f s", self.desc, self._counts(), ", then stopped" if stopped else "", elapsed)

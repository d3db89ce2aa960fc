"""The scheduler: one `Node` per process, with a `Worker` (runs tasks) and/or a `Hub` (rank 0).

Messages between ranks are pickled tuples of plain values in frame 0, followed by out-of-band
buffers (`protocol`). See docs/design.md for the whole picture; the rules that matter most:

* Only the *token* holder among a worker's threads runs task code, so a worker uses one core.
* A waiting task runs its still-queued children inline; otherwise it hands the token to another
  thread (a new one while under ``max_threads``), or, at the cap, runs other queued work inline.
* The communication thread never blocks on a send (a sender thread does the writes), so two
  processes can never block writing to each other.
* Scheduler locks are never held while taking a future's lock (futures call into `Worker.wake`).

Modules, each importing only those listed before it (and the leaves `_errors`, `_serial`,
`_futures`, `_log`; never a transport or the executor): `protocol` (message kinds, states, wire
records), `task`, `ports` (what the scheduler needs from a transport and from its node),
`results`, `worker`, `hub`, `node`. The layers above import from this package only.
"""

from __future__ import annotations

from .hub import Hub
from .node import Node
from .protocol import Kind, TaskKind
from .worker import Worker

__all__ = ["Hub", "Kind", "Node", "TaskKind", "Worker"]

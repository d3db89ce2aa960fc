"""Run summaries and trace files, built from the reports workers send as they stop.

Trace events recorded by each rank (``Node.trace``), all times are ``time.time()`` seconds:

* ``("task", start, duration, owner, tid, parent, function, thread, ok, items, inline_depth)``
  — ``parent`` is ``(owner, tid)`` of the task that submitted it, or None for top-level tasks;
* ``("wait", start, duration, (owner, tid) | None, thread)`` — a task suspended on its children;
* ``("steal", time, thief, ntasks)`` — this rank gave ``ntasks`` queued tasks to ``thief``;
* ``("msg", time, dest, nbytes)`` — a message sent.

A leaf: imports no other module of the package.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

Reports = dict[int, tuple[dict[str, Any], Any]]


def format_summary(reports: Reports, ended: float | None = None) -> str:
    """The table DTM's printSummary promised: per function, then per worker."""
    ended = time.time() if ended is None else ended
    funcs: dict[str, list[float]] = {}
    for stats, _ in reports.values():
        for name, (count, total, items) in stats.get("functions", {}).items():
            f = funcs.setdefault(name, [0, 0.0, 0])
            f[0] += count
            f[1] += total
            f[2] += items
    lines = ["dtm_executor run summary", "", f"{'function':<40} {'tasks':>8} {'items':>9} {'mean ms*':>9} {'total s*':>9}"]
    for name, (count, total, items) in sorted(funcs.items(), key=lambda kv: -kv[1][1]):
        mean = 1000 * total / max(1, items)
        lines.append(f"{name[:40]:<40} {count:>8} {items:>9} {mean:>9.3f} {total:>9.3f}")
    lines += ["", f"{'worker':<28} {'tasks':>8} {'busy %':>7} {'stolen':>7} {'msgs':>8} {'MB sent':>9} {'threads':>7}"]
    for rank in sorted(reports):
        s, _ = reports[rank]
        if "tasks_run" not in s:
            continue
        busy = "-"  # unknown without the worker's start time
        if s.get("started") is not None:
            busy = f"{100.0 * s.get('busy', 0.0) / max(1e-9, ended - s['started']):.1f}"
        who = f"rank {rank} ({s.get('host', '?')}:{s.get('pid', '?')})"
        lines.append(
            f"{who[:28]:<28} {s['tasks_run']:>8} {busy:>7} {s.get('stolen', 0):>7} "
            f"{s.get('msgs_sent', 0):>8} {s.get('bytes_sent', 0) / 1e6:>9.2f} {s.get('peak_threads', 0):>7}"
        )
    lines += ["", "* inclusive: a task's time includes the children it ran inline and its waits"]
    return "\n".join(lines)


def write_trace(directory: str, reports: Reports, ended: float | None = None) -> list[str]:
    """Write ``log<rank>.xml`` per rank (DTM's layout) and one ``trace.json`` (Chrome format)."""
    ended = time.time() if ended is None else ended
    os.makedirs(directory, exist_ok=True)
    written = []
    t0 = min((ev[1] for _, tr in reports.values() if tr for ev in tr), default=time.time())
    chrome: list[dict[str, Any]] = []
    for rank in sorted(reports):
        stats, trace = reports[rank]
        trace = trace or []
        path = os.path.join(directory, f"log{rank}.xml")
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(_xml(rank, stats, trace, ended))
        written.append(path)
        chrome.append({"ph": "M", "name": "process_name", "pid": rank, "tid": 0, "ts": 0,
                       "args": {"name": f"rank {rank} ({stats.get('host', '?')} pid {stats.get('pid', '?')})"}})
        for ev in trace:
            chrome.extend(_chrome(rank, ev, t0))
    chrome.extend(_flows(reports, t0))
    # the format wants numeric thread ids: number the thread names, and name the numbers
    tids: dict[tuple[int, str], int] = {}
    for ev in chrome:
        if ev.get("ph") != "M":
            key = (ev["pid"], str(ev["tid"]))
            ev["tid"] = tids.setdefault(key, len(tids) + 1)
    chrome.extend({"ph": "M", "name": "thread_name", "pid": pid, "tid": num, "ts": 0, "args": {"name": name}}
                  for (pid, name), num in tids.items())
    path = os.path.join(directory, "trace.json")
    with open(path, "w", encoding="utf-8") as fh:
        json.dump({"traceEvents": chrome, "displayTimeUnit": "ms",
                   "otherData": {"producer": "dtm_executor"}}, fh)
    written.append(path)
    return written


def _flows(reports: Reports, t0: float) -> list[dict[str, Any]]:
    """Arrows from each parent task to the children it spawned (the task tree)."""
    where: dict[tuple[int, int], tuple[int, str, float]] = {}
    for rank, (_, trace) in reports.items():
        for ev in trace or ():
            if ev[0] == "task":
                where.setdefault((ev[3], ev[4]), (rank, ev[7], ev[1]))
    out: list[dict[str, Any]] = []
    for rank, (_, trace) in reports.items():
        for ev in trace or ():
            if ev[0] != "task" or ev[5] is None:
                continue
            src = where.get(tuple(ev[5]))
            if src is None:
                continue
            fid = f"{ev[3]}:{ev[4]}"
            out.append({"ph": "s", "name": "spawn", "cat": "spawn", "id": fid, "pid": src[0],
                        "tid": src[1], "ts": _us(src[2], t0)})
            out.append({"ph": "f", "bp": "e", "name": "spawn", "cat": "spawn", "id": fid,
                        "pid": rank, "tid": ev[7], "ts": _us(ev[1], t0)})
    return out


def _us(t: float, t0: float) -> float:
    return round((t - t0) * 1e6, 3)


def _chrome(rank: int, ev: tuple[Any, ...], t0: float) -> list[dict[str, Any]]:
    kind = ev[0]
    if kind == "task":
        _, start, dur, owner, tid, parent, name, thread, ok, items, depth = ev
        args = {"task": f"{owner}:{tid}", "parent": f"{parent[0]}:{parent[1]}" if parent else "root",
                "ok": ok, "items": items, "inline_depth": depth}
        return [{"ph": "X", "name": name, "cat": "task", "pid": rank, "tid": thread,
                 "ts": _us(start, t0), "dur": round(dur * 1e6, 3), "args": args}]
    if kind == "wait":
        _, start, dur, task, thread = ev
        return [{"ph": "X", "name": "wait", "cat": "wait", "pid": rank, "tid": thread,
                 "ts": _us(start, t0), "dur": round(dur * 1e6, 3),
                 "args": {"task": f"{task[0]}:{task[1]}" if task else "?"}}]
    if kind == "steal":
        _, at, thief, n = ev
        return [{"ph": "i", "s": "p", "name": f"stolen by {thief}", "cat": "steal", "pid": rank,
                 "tid": "comm", "ts": _us(at, t0), "args": {"thief": thief, "tasks": n}}]
    if kind == "msg":
        _, at, dest, nbytes = ev
        return [{"ph": "i", "s": "t", "name": f"msg to {dest}", "cat": "msg", "pid": rank,
                 "tid": "send", "ts": _us(at, t0), "args": {"dest": dest, "bytes": nbytes}}]
    return []


def _xml(rank: int, stats: dict[str, Any], trace: list[tuple[Any, ...]], ended: float) -> str:
    from xml.sax.saxutils import quoteattr  # imported when used: it imports urllib, email and ssl

    out = ['<?xml version="1.0" encoding="utf-8"?>', f'<dtm worker="{rank}" host={quoteattr(str(stats.get("host", "")))} pid="{stats.get("pid", "")}">']
    out.append("  <tasksLog>")
    for ev in trace:
        if ev[0] == "task":
            _, start, dur, owner, tid, parent, name, thread, ok, items, depth = ev
            ptxt = f"{parent[0]}:{parent[1]}" if parent else "root"
            out.append(
                f'    <task id="{owner}:{tid}" creator={quoteattr(ptxt)} creatorWorker="{parent[0] if parent else 0}" '
                f'function={quoteattr(str(name))} start="{start:.6f}" duration="{dur:.6f}" '
                f'thread={quoteattr(str(thread))} ok="{int(bool(ok))}" items="{items}" inlineDepth="{depth}"/>'
            )
        elif ev[0] == "wait":
            _, start, dur, task, thread = ev
            ttxt = f"{task[0]}:{task[1]}" if task else "?"
            out.append(f'    <wait task={quoteattr(ttxt)} start="{start:.6f}" duration="{dur:.6f}" thread={quoteattr(str(thread))}/>')
    out.append("  </tasksLog>")
    out.append("  <loadBalancerLog>")
    for ev in trace:
        if ev[0] == "steal":
            out.append(f'    <steal time="{ev[1]:.6f}" thief="{ev[2]}" tasks="{ev[3]}"/>')
    out.append("  </loadBalancerLog>")
    out.append("  <commLog>")
    for ev in trace:
        if ev[0] == "msg":
            out.append(f'    <msg time="{ev[1]:.6f}" dest="{ev[2]}" bytes="{ev[3]}"/>')
    out.append("  </commLog>")
    out.append("  <statsLog>")
    for name, (count, total, items) in sorted(stats.get("functions", {}).items()):
        out.append(f'    <function name={quoteattr(str(name))} count="{count}" items="{items}" total="{total:.6f}"/>')
    out.append("  </statsLog>")
    keys = ("tasks_run", "busy", "stolen", "msgs_sent", "bytes_sent", "peak_threads", "started")
    attrs = " ".join(f'{k}="{stats[k]}"' for k in keys if k in stats)
    attrs += f' ended="{ended:.6f}"'  # with started: the span busy % is measured over
    out.append(f"  <finalStats {attrs}/>")
    out.append("</dtm>")
    return "\n".join(out) + "\n"

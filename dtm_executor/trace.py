"""Read a trace directory written by ``DTMExecutor(trace_dir=DIR)``: summary table and timeline.

``python -m dtm_executor.trace DIR`` prints the run summary (per function, per worker, and the
shape of the task tree) from the ``log<rank>.xml`` files; ``--plot out.png`` also draws one row
per worker thread with tasks as bars coloured by function, waits hatched, and the workers'
utilisation over time (needs matplotlib: ``pip install 'dtm_executor[trace]'``). Only the files
are read, so a trace copied from a cluster can be looked at anywhere.

An entry point: reads trace files only (imports the leaf `_report`).
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any, Sequence

from . import _report

__all__ = ["main"]


@dataclass
class _Task:
    rank: int
    id: str
    parent: str  # "owner:tid", or "root" for a top-level task
    function: str
    start: float
    duration: float
    thread: str
    ok: bool
    items: int
    inline_depth: int


@dataclass
class _Rank:
    rank: int
    stats: dict[str, Any]
    tasks: list[_Task] = field(default_factory=list)
    waits: list[tuple[float, float, str, str]] = field(default_factory=list)  # start, dur, task, thread
    steals: list[tuple[float, int, int]] = field(default_factory=list)  # time, thief, ntasks


def _num(text: str | None, kind: type = float) -> Any:
    if text is None or text == "":
        return None
    try:
        return kind(text)
    except ValueError:
        return float(text) if kind is int else None


def _load_rank(path: str) -> _Rank:
    root = ET.parse(path).getroot()
    if root.tag != "dtm":
        raise ValueError(f"{path}: not a dtm_executor log (root element <{root.tag}>)")
    rank = int(root.get("worker", "0"))
    stats: dict[str, Any] = {"rank": rank, "host": root.get("host", "?"), "pid": root.get("pid", "?")}
    final = root.find("finalStats")
    if final is not None:
        for key, value in final.attrib.items():
            stats[key] = _num(value, int if key in ("tasks_run", "stolen", "msgs_sent", "bytes_sent", "peak_threads") else float)
    stats["functions"] = {
        f.get("name", "?"): (_num(f.get("count"), int) or 0, _num(f.get("total")) or 0.0, _num(f.get("items"), int) or 0)
        for f in root.iterfind("statsLog/function")
    }
    rec = _Rank(rank, stats)
    for el in root.iterfind("tasksLog/*"):
        if el.tag == "task":
            rec.tasks.append(_Task(
                rank, el.get("id", "?"), el.get("creator", "root"), el.get("function", "?"),
                _num(el.get("start")) or 0.0, _num(el.get("duration")) or 0.0, el.get("thread", "?"),
                el.get("ok", "1") == "1", _num(el.get("items"), int) or 1, _num(el.get("inlineDepth"), int) or 0,
            ))
        elif el.tag == "wait":
            rec.waits.append((_num(el.get("start")) or 0.0, _num(el.get("duration")) or 0.0,
                              el.get("task", "?"), el.get("thread", "?")))
    for el in root.iterfind("loadBalancerLog/steal"):
        rec.steals.append((_num(el.get("time")) or 0.0, _num(el.get("thief"), int) or 0, _num(el.get("tasks"), int) or 0))
    return rec


def _load(directory: str) -> list[_Rank]:
    paths = glob.glob(os.path.join(directory, "log*.xml"))
    paths = [p for p in paths if re.fullmatch(r"log\d+\.xml", os.path.basename(p))]
    if not paths:
        raise FileNotFoundError(f"no log<rank>.xml files in {directory!r}: not a dtm_executor trace directory "
                                "(write one with DTMExecutor(trace_dir=...))")
    return sorted((_load_rank(p) for p in paths), key=lambda r: r.rank)


def _tree_shape(tasks: Sequence[_Task]) -> tuple[int, int, int, int]:
    """(total tasks, top-level tasks, max depth in levels, tasks whose parent is not in the trace)."""
    parent = {t.id: t.parent for t in tasks}
    depth: dict[str, int] = {"root": 0}
    for start in parent:
        chain: list[str] = []
        node = start
        while node not in depth and len(chain) <= len(parent):
            chain.append(node)
            node = parent.get(node, "root")  # a parent missing (its rank's log was lost): a root
        d = depth.get(node, 0)
        for n in reversed(chain):
            d += 1
            depth[n] = d
    top = sum(1 for p in parent.values() if p == "root")
    orphans = sum(1 for p in parent.values() if p != "root" and p not in parent)
    return len(parent), top, max((depth[k] for k in parent), default=0), orphans


def _summary(directory: str, ranks: list[_Rank]) -> str:
    reports: _report.Reports = {r.rank: (r.stats, None) for r in ranks}
    ended = max((r.stats.get("ended") or 0.0 for r in ranks), default=0.0) or None
    tasks = [t for r in ranks for t in r.tasks]
    total, top, depth, orphans = _tree_shape(tasks)
    span = ""
    if tasks:
        t0 = min(t.start for t in tasks)
        t1 = max(t.start + t.duration for t in tasks)
        span = f", tasks from first start to last end: {t1 - t0:.3f} s"
    lines = [f"trace directory {directory}: {len(ranks)} rank(s){span}", "",
             _report.format_summary(reports, ended), "",
             f"task tree: {total} tasks, {top} top-level, max depth {depth}"
             + (f", {orphans} whose parent is not in the trace" if orphans else "")]
    failed = sum(1 for t in tasks if not t.ok)
    if failed:
        lines.append(f"failed tasks: {failed}")
    steals = sum(n for r in ranks for _, _, n in r.steals)
    if steals:
        lines.append(f"tasks handed to idle workers by stealing: {steals}")
    if os.path.exists(os.path.join(directory, "trace.json")):
        lines.append(f"timeline: open {os.path.join(directory, 'trace.json')} in https://ui.perfetto.dev or chrome://tracing")
    return "\n".join(lines)


# -- the picture -------------------------------------------------------------------------------
class _PlotError(Exception):
    pass


def _union(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for s, e in sorted(intervals):
        if out and s <= out[-1][1]:
            if e > out[-1][1]:
                out[-1] = (out[-1][0], e)
        else:
            out.append((s, e))
    return out


def _subtract(busy: list[tuple[float, float]], holes: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out = []
    holes = _union(holes)
    j = 0
    for s, e in busy:
        while j < len(holes) and holes[j][1] <= s:
            j += 1
        k = j
        cur = s
        while k < len(holes) and holes[k][0] < e:
            if holes[k][0] > cur:
                out.append((cur, holes[k][0]))
            cur = max(cur, holes[k][1])
            k += 1
        if cur < e:
            out.append((cur, e))
    return out


def _busy_intervals(rank: _Rank) -> list[tuple[float, float]]:
    """When this rank ran task code: outermost task spans per thread minus that thread's waits."""
    out: list[tuple[float, float]] = []
    threads = {t.thread for t in rank.tasks}
    for th in threads:
        spans = _union([(t.start, t.start + t.duration) for t in rank.tasks if t.thread == th and t.inline_depth == 0])
        waits = [(s, s + d) for s, d, _, wth in rank.waits if wth == th]
        out.extend(_subtract(spans, waits))
    return _union(out)


def _thread_key(name: str) -> tuple[Any, ...]:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


def _plot(directory: str, ranks: list[_Rank], out: str) -> None:
    try:
        import numpy as np
        from matplotlib.colors import to_rgb
        from matplotlib.figure import Figure
        from matplotlib.patches import Patch
    except ImportError:
        raise _PlotError("--plot needs matplotlib: pip install 'dtm_executor[trace]' (or pip install matplotlib)") from None

    tasks = [t for r in ranks for t in r.tasks]
    if not tasks:
        raise _PlotError(f"{directory}: the trace holds no tasks, nothing to plot")
    t0 = min(t.start for t in tasks)
    t1 = max(t.start + t.duration for t in tasks)
    span = max(t1 - t0, 1e-6)

    totals: dict[str, float] = {}
    for t in tasks:
        totals[t.function] = totals.get(t.function, 0.0) + t.duration
    ordered = sorted(totals, key=lambda f: -totals[f])
    palette = [f"C{i}" for i in range(10)]
    shown = ordered[:9] if len(ordered) > 10 else ordered
    color = {f: palette[i] for i, f in enumerate(shown)}

    rows: list[tuple[_Rank, str]] = []
    for r in ranks:
        threads = {t.thread for t in r.tasks} | {w[3] for w in r.waits}
        rows.extend((r, th) for th in sorted(threads, key=_thread_key))
    workers = [r for r in ranks if r.tasks or "tasks_run" in r.stats]

    fig = Figure(figsize=(12, 2.6 + 0.38 * max(len(rows), 2)), layout="constrained")
    gs = fig.add_gridspec(2, 1, height_ratios=[max(len(rows), 2), 3.2])
    ax = fig.add_subplot(gs[0])
    ax_u = fig.add_subplot(gs[1], sharex=ax)

    labels = []
    for y, (r, th) in enumerate(rows):
        short = re.sub(rf"^dtm-exec-{r.rank}-", "thread ", th)
        labels.append(f"rank {r.rank} · {short}")
        groups: dict[tuple[str, int], list[tuple[float, float]]] = {}
        for t in r.tasks:
            if t.thread == th:
                groups.setdefault((t.function, t.inline_depth), []).append((t.start - t0, t.duration))
        for (fn, depth), xr in sorted(groups.items(), key=lambda kv: kv[0][1]):
            # children run inline draw thinner and lighter, over their parent
            h = 0.8 * 0.8 ** min(depth, 6)
            rgb = np.array(to_rgb(color.get(fn, "0.6")))
            face = rgb + (1.0 - rgb) * min(0.1 * depth, 0.6)
            ax.broken_barh(xr, (y - h / 2, h), facecolors=[tuple(face)], edgecolors="white", linewidth=0.3,
                           zorder=2 + depth)
        waits = [(s - t0, d) for s, d, _, wth in r.waits if wth == th]
        if waits:
            ax.broken_barh(waits, (y - 0.4, 0.8), facecolors="white", edgecolors="0.25", hatch="////",
                           linewidth=0.4, zorder=20)
    ax.set_yticks(range(len(rows)), labels)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(f"dtm_executor trace {os.path.basename(os.path.normpath(directory))}: {len(tasks)} tasks on "
                 f"{len(workers)} worker(s), {span:.3f} s")
    handles = [Patch(facecolor=color[f], label=f) for f in shown]
    if len(ordered) > len(shown):
        handles.append(Patch(facecolor="0.6", label=f"{len(ordered) - len(shown)} other function(s)"))
    handles.append(Patch(facecolor="white", edgecolor="0.25", hatch="////", label="waiting on children"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)

    # utilisation: the share of worker time spent running task code, per time bin
    nbins = 300
    edges = np.linspace(0.0, span, nbins + 1)
    covered = np.zeros(nbins + 1)
    for r in workers:
        busy = _busy_intervals(r)
        if not busy:
            continue
        starts = np.array([s - t0 for s, _ in busy])
        lengths = np.array([e - s for s, e in busy])
        before = np.concatenate(([0.0], np.cumsum(lengths)))
        j = np.searchsorted(starts, edges, side="right") - 1
        inside = np.where(j >= 0, np.minimum(edges - starts[np.maximum(j, 0)], lengths[np.maximum(j, 0)]), 0.0)
        covered += np.where(j >= 0, before[np.maximum(j, 0)] + inside, 0.0)
    util = 100.0 * np.diff(covered) / (np.diff(edges) * max(1, len(workers)))
    mids = (edges[:-1] + edges[1:]) / 2
    mean = 100.0 * covered[-1] / (span * max(1, len(workers)))
    ax_u.fill_between(mids, util, step="mid", alpha=0.35, color="C0")
    ax_u.plot(mids, util, drawstyle="steps-mid", color="C0", linewidth=1, label=f"mean {mean:.0f}%")
    ax_u.set_ylim(0, 105)
    ax_u.set_ylabel("workers busy %")
    ax_u.set_xlabel("seconds since the first task started")
    ax_u.set_xlim(0, span)
    ax_u.grid(alpha=0.3)
    ax_u.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
    fig.savefig(out, dpi=110)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dtm_executor.trace DIR [--plot out.png]``; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m dtm_executor.trace",
        description="Summarize (and optionally draw) a trace directory written by DTMExecutor(trace_dir=DIR).",
    )
    parser.add_argument("directory", help="the trace directory (holds log<rank>.xml and trace.json)")
    parser.add_argument("--plot", metavar="OUT.png", help="also draw the timeline and utilisation to this image file")
    args = parser.parse_args(argv)
    try:
        ranks = _load(args.directory)
    except (OSError, ET.ParseError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(_summary(args.directory, ranks))
    if args.plot:
        try:
            _plot(args.directory, ranks, args.plot)
        except _PlotError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"picture written to {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

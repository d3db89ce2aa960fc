"""Trace mode, run summaries and progress: the files a traced run writes, what the summary and
``python -m dtm_executor.trace`` print, the ``--plot`` picture, and ``progress=True``.

Task functions live at module level so workers import them by reference.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import pytest

from dtm_executor import DTMExecutor, current_executor
from dtm_executor import _progress

pytestmark = pytest.mark.timeout(120)

FIB_N = 8
FIB_TASKS = 67  # calls made by the naive recursion of fib(8): 2 * fib(9) - 1
MAP_ITEMS = 50
XML_SECTIONS = ("tasksLog", "loadBalancerLog", "statsLog", "commLog", "finalStats")


def fib(n: int) -> int:
    if n < 2:
        return n
    ex = current_executor()
    a = ex.submit(fib, n - 1)
    b = ex.submit(fib, n - 2)
    return a.result() + b.result()


def square(x: int) -> int:
    return x * x


def _numbers(n: int):
    yield from range(n)


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One traced run on two workers: fib(8) with every call a task, then a small map.
    Returns the trace directory and what print_summary wrote to stdout."""
    d = tmp_path_factory.mktemp("trace")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        with DTMExecutor(2, print_summary=True, trace_dir=d) as ex:
            assert ex.submit(fib, FIB_N).result() == 21
            assert list(ex.map(square, range(MAP_ITEMS))) == [x * x for x in range(MAP_ITEMS)]
    return d, out.getvalue()


def _xml_logs(d: Path) -> dict[int, ET.Element]:
    logs = {}
    for p in d.glob("log*.xml"):
        root = ET.parse(p).getroot()
        logs[int(p.stem[3:])] = root
    return logs


def _task_events(d: Path) -> list[dict]:
    data = json.loads((d / "trace.json").read_text())
    return [e for e in data["traceEvents"] if e["ph"] == "X" and e.get("cat") == "task"]


def _function_counts(logs: dict[int, ET.Element]) -> Counter:
    counts: Counter = Counter()
    for root in logs.values():
        for f in root.iterfind("statsLog/function"):
            counts[f.get("name").rsplit(".", 1)[-1]] += int(f.get("count"))
    return counts


def _run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dtm_executor.trace", *args], capture_output=True,
                          text=True, timeout=timeout)


# -- the files ---------------------------------------------------------------------------------
def test_trace_dir_holds_one_xml_per_rank_and_a_chrome_trace(traced):
    d, _ = traced
    assert sorted(p.name for p in d.iterdir()) == ["log0.xml", "log1.xml", "log2.xml", "trace.json"]


def test_chrome_trace_is_valid_trace_event_json(traced):
    d, _ = traced
    data = json.loads((d / "trace.json").read_text())
    assert isinstance(data, dict) and isinstance(data["traceEvents"], list)
    assert data["traceEvents"]
    for ev in data["traceEvents"]:
        for key in ("ph", "pid", "tid", "ts"):
            assert key in ev, (key, ev)
        for key in ("pid", "tid"):
            assert isinstance(ev[key], int) and not isinstance(ev[key], bool), ev
        assert isinstance(ev["ts"], (int, float)), ev
        if ev["ph"] == "X":
            assert isinstance(ev["dur"], (int, float)) and ev["dur"] >= 0, ev
    names = {(e["pid"], e["name"]) for e in data["traceEvents"] if e["ph"] == "M"}
    assert {(r, "process_name") for r in (0, 1, 2)} <= names
    # every thread that shows events is named
    named = {(e["pid"], e["tid"]) for e in data["traceEvents"] if e["ph"] == "M" and e["name"] == "thread_name"}
    used = {(e["pid"], e["tid"]) for e in data["traceEvents"] if e["ph"] != "M"}
    assert used <= named


def test_chrome_trace_names_every_task_with_its_parent(traced):
    d, _ = traced
    tasks = _task_events(d)
    logs = _xml_logs(d)
    ran = sum(int(root.find("finalStats").get("tasks_run", 0)) for root in logs.values())
    counts = _function_counts(logs)
    assert len(tasks) == ran == sum(counts.values())
    assert counts["fib"] == FIB_TASKS

    fibs = {e["args"]["task"]: e for e in tasks if e["name"].endswith(".fib")}
    assert len(fibs) == FIB_TASKS  # task ids are unique
    roots = [t for t, e in fibs.items() if e["args"]["parent"] == "root"]
    assert len(roots) == 1
    children = Counter(e["args"]["parent"] for e in fibs.values())
    for t, e in fibs.items():
        if t not in roots:
            assert e["args"]["parent"] in fibs, e  # every parent link points at a traced fib task
        assert children.get(t, 0) in (0, 2)  # fib(n>=2) spawns two children, fib(0|1) none

    def depth(t: str) -> int:
        p = fibs[t]["args"]["parent"]
        return 1 if p == "root" else 1 + depth(p)

    assert max(depth(t) for t in fibs) == FIB_N

    maps = [e for e in tasks if e["name"].endswith(".square")]
    assert sum(e["args"]["items"] for e in maps) == MAP_ITEMS
    assert all(e["args"]["parent"] == "root" and e["args"]["ok"] for e in maps)

    # the task tree is drawn as flow arrows: one per child task
    data = json.loads((d / "trace.json").read_text())
    ends = [e for e in data["traceEvents"] if e["ph"] == "f"]
    assert len(ends) == FIB_TASKS - 1
    starts = {e["id"] for e in data["traceEvents"] if e["ph"] == "s"}
    assert {e["id"] for e in ends} == starts


def test_xml_logs_have_the_dtm_sections(traced):
    d, _ = traced
    logs = _xml_logs(d)
    assert sorted(logs) == [0, 1, 2]
    for rank, root in logs.items():
        assert root.tag == "dtm" and root.get("worker") == str(rank)
        assert root.get("host") and root.get("pid")
        assert sorted(child.tag for child in root) == sorted(XML_SECTIONS)
        final = root.find("finalStats")
        float(final.get("ended"))
        for task in root.iterfind("tasksLog/task"):
            for attr in ("id", "creator", "creatorWorker", "function", "start", "duration", "thread", "ok",
                         "items", "inlineDepth"):
                assert task.get(attr) is not None, (attr, task.attrib)
            float(task.get("start")), float(task.get("duration"))
        per_fn = Counter(t.get("function") for t in root.iterfind("tasksLog/task"))
        assert per_fn == {f.get("name"): int(f.get("count")) for f in root.iterfind("statsLog/function")}
        for msg in root.iterfind("commLog/msg"):
            assert int(msg.get("bytes")) > 0 and int(msg.get("dest")) in (0, 1, 2)
    for rank in (1, 2):  # workers report their counters; rank 0 (the local hub) runs no tasks
        final = logs[rank].find("finalStats")
        for attr in ("tasks_run", "busy", "stolen", "msgs_sent", "bytes_sent", "peak_threads", "started"):
            assert final.get(attr) is not None, (rank, attr)
    assert sum(int(logs[r].find("finalStats").get("msgs_sent")) for r in (1, 2)) > 0


# -- the summaries -----------------------------------------------------------------------------
def test_print_summary_of_the_traced_run(traced):
    _, text = traced
    assert "run summary" in text
    assert "test_trace.fib" in text and "test_trace.square" in text
    assert "rank 1 (" in text and "rank 2 (" in text
    for column in ("tasks", "busy %", "stolen", "msgs", "MB sent"):
        assert column in text


def test_print_summary_goes_to_stdout(make_executor, capsys):
    ex = make_executor(2, print_summary=True)
    assert sum(ex.map(square, range(20))) == sum(x * x for x in range(20))
    ex.shutdown()
    out = capsys.readouterr().out
    assert "test_trace.square" in out
    rows = [line for line in out.splitlines() if line.startswith("rank ")]
    assert len(rows) == 2
    tasks = sum(int(line.split()[3]) for line in rows)  # "rank N (host:pid) tasks busy ..."
    fn_row = next(line for line in out.splitlines() if "test_trace.square" in line)
    assert int(fn_row.split()[1]) == tasks and int(fn_row.split()[2]) == 20


def test_trace_command_prints_the_summary_and_tree_shape(traced):
    d, _ = traced
    chunks = _function_counts(_xml_logs(d))["square"]
    res = _run_cli(str(d))
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "test_trace.fib" in out and "test_trace.square" in out
    assert "rank 1 (" in out and "rank 2 (" in out
    fib_row = next(line for line in out.splitlines() if "test_trace.fib" in line)
    assert fib_row.split()[1:3] == [str(FIB_TASKS), str(FIB_TASKS)]
    assert f"task tree: {FIB_TASKS + chunks} tasks, {1 + chunks} top-level, max depth {FIB_N}" in out
    assert "trace.json" in out


def test_trace_command_rejects_a_directory_without_logs(tmp_path):
    res = _run_cli(str(tmp_path))
    assert res.returncode == 1
    assert "log<rank>.xml" in res.stderr


def test_trace_plot_draws_a_png(traced, tmp_path):
    pytest.importorskip("matplotlib")
    d, _ = traced
    out = tmp_path / "timeline.png"
    res = _run_cli(str(d), "--plot", str(out), timeout=120)
    assert res.returncode == 0, res.stderr
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_trace_plot_without_matplotlib_names_the_extra(traced, tmp_path):
    d, _ = traced
    code = ("import sys; sys.modules['matplotlib'] = None; "  # as if it were not installed
            "from dtm_executor.trace import main; sys.exit(main(sys.argv[1:]))")
    res = subprocess.run([sys.executable, "-c", code, str(d), "--plot", str(tmp_path / "x.png")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert "dtm_executor[trace]" in res.stderr
    assert "task tree" in res.stdout  # the summary is still printed
    assert not (tmp_path / "x.png").exists()


# -- progress ----------------------------------------------------------------------------------
def test_progress_bar_with_tqdm(make_executor, capsys):
    pytest.importorskip("tqdm")
    ex = make_executor(2, progress=True)
    assert list(ex.map(square, range(30))) == [x * x for x in range(30)]
    err = capsys.readouterr().err
    assert "map(square)" in err and "30/30" in err


def test_progress_fallback_logs_items_done(make_executor, monkeypatch, caplog):
    monkeypatch.setattr(_progress, "_tqdm_class", lambda: None)
    monkeypatch.setattr(_progress, "LOG_INTERVAL", 0.0)
    caplog.set_level(logging.INFO, logger="dtm_executor")
    ex = make_executor(2, progress=True)
    assert sum(ex.map(square, range(40))) == sum(x * x for x in range(40))
    assert sum(ex.map(square, _numbers(25))) == sum(x * x for x in range(25))  # no len: no total
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("map(square)")]
    assert "map(square): 40/40 items (100%) done in" in "\n".join(lines)
    assert any(line.startswith("map(square): 25 items done in") for line in lines)
    assert any("/40 items" in line and "items/s" in line for line in lines)  # intermediate lines


def test_progress_fallback_reports_a_map_that_stopped(make_executor, monkeypatch, caplog):
    monkeypatch.setattr(_progress, "_tqdm_class", lambda: None)
    caplog.set_level(logging.INFO, logger="dtm_executor")
    ex = make_executor(1, progress=True)
    it = ex.map(square, range(100), chunksize=10)
    assert next(it) == 0
    it.close()  # the consumer gives up: the bar closes and says so
    assert any("10/100 items (10%) done, then stopped" in r.getMessage() for r in caplog.records)


def test_progress_fallback_warns_when_nothing_would_show(make_executor, monkeypatch, caplog):
    monkeypatch.setattr(_progress, "_tqdm_class", lambda: None)
    monkeypatch.setattr(_progress, "_warned", [False])
    caplog.set_level(logging.WARNING, logger="dtm_executor")
    ex = make_executor(1, progress=True)
    list(ex.map(square, range(5)))
    list(ex.map(square, range(5)))
    warnings = [r for r in caplog.records if "tqdm is not installed" in r.getMessage()]
    assert len(warnings) == 1 and "dtm_executor[progress]" in warnings[0].getMessage()


def test_progress_is_off_by_default(make_executor, capsys, caplog):
    caplog.set_level(logging.INFO, logger="dtm_executor")
    ex = make_executor(1)
    list(ex.map(square, range(10)))
    assert "map(square)" not in capsys.readouterr().err
    assert not [r for r in caplog.records if r.getMessage().startswith("map(")]

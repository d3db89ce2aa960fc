"""Options: ``DTMExecutor.setOptions`` (DTM's Control API method on the executor), and the
constructor's checking of its keywords, transports and environment."""

from __future__ import annotations

import os
import warnings
from typing import Iterator

import pytest

from dtm_executor import DTMExecutor, dtm
from dtm_executor import _options

pytestmark = pytest.mark.timeout(120)

HERE = os.path.abspath(__file__)


def sq(x):
    return x * x


def set_options_in_a_task(_):
    try:
        DTMExecutor().setOptions(taskGranularity=0.5)
    except RuntimeError as e:
        return str(e)
    return "no error"


@pytest.fixture(autouse=True)
def _clean_options() -> Iterator[None]:
    _options.reset_global()
    yield
    _options.reset_global()


# -- 3. DTMExecutor.setOptions ----------------------------------------------------------------
def test_setOptions_on_the_executor_takes_dtm_names_and_values(make_executor, capsys):
    ex = make_executor(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ex.setOptions(communicationManager="local", loadBalancer="PDB", printSummary=True,
                      taskGranularity=0.05)
        assert ex._granularity == 0.05
        ex.setOptions(task_granularity=0.02, progress=False)  # Python names too, several calls
        assert ex._granularity == 0.02
    assert ex.map_async(sq, range(10)).get() == [i * i for i in range(10)]
    ex.shutdown()
    assert "dtm_executor run summary" in capsys.readouterr().out  # printSummary took effect


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"taskGranularity": -1}, "taskGranularity"),
        ({"printSummary": "yes"}, "printSummary"),
        ({"loadBalancer": "RoundRobin"}, "loadBalancer"),
        ({"communicationManager": "deap.dtm.commManagerTCP"}, "transport='tcp'"),
        ({"communicationManager": "deap.dtm.pvm"}, "communicationManager"),
        ({"progress": "yes"}, "progress"),
        ({"max_workers": 4}, "max_workers"),
        ({"max_threads": 4}, "max_threads"),
        ({"hostfile": "hosts.txt"}, "hostfile"),
        ({"setTraceMode": True}, "trace_dir"),  # its workers started without tracing
        ({"taskGranularity": 0.5, "printSummary": 3}, "printSummary"),
    ],
)
def test_setOptions_on_the_executor_rejects_what_it_cannot_do(make_executor, kwargs, match):
    ex = make_executor(1)
    with pytest.raises(ValueError, match=match):
        ex.setOptions(**kwargs)
    assert ex._granularity == 0.0 and not ex._print_summary  # nothing was applied
    assert ex.apply(sq, 3) == 9


def test_setOptions_on_the_executor_unknown_names_are_warnings(make_executor):
    ex = make_executor(1)
    with pytest.warns(dtm.DTMOptionWarning, match="bogusOption") as rec:
        ex.setOptions(bogusOption=3, taskGranularity=0.1)
    assert rec[0].filename == HERE  # the warning points at the caller's line
    assert ex._granularity == 0.1
    with pytest.warns(dtm.DTMOptionWarning, match="positional"):
        ex.setOptions("printSummary")


def test_setOptions_on_a_tracing_executor_changes_the_trace_directory(make_executor, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    ex = make_executor(1, trace_dir=first)
    ex.setOptions(setTraceMode=True, traceDir=str(second))
    assert ex.apply(sq, 2) == 4
    ex.shutdown()
    assert (second / "trace.json").exists() and not first.exists()


def test_setOptions_inside_a_task_or_after_shutdown(make_executor):
    ex = make_executor(1)
    assert "inside a task" in ex.submit(set_options_in_a_task, 0).result(timeout=60)
    ex.shutdown()
    with pytest.warns(dtm.DTMOptionWarning, match="after shutdown"):
        ex.setOptions(taskGranularity=0.5)
    assert ex._granularity == 0.0


# -- 4. max_workers, in the standard library's words ------------------------------------------
@pytest.mark.parametrize("n", [0, -1, -8])
def test_max_workers_not_positive_is_the_standard_ValueError(n, proctools):
    before = set(proctools.live_children())
    for make in (lambda: DTMExecutor(n), lambda: DTMExecutor(max_workers=n)):
        with pytest.raises(ValueError) as info:
            make()
        assert str(info.value) == "max_workers must be greater than 0"
    dtm.setOptions(max_workers=n)
    with pytest.raises(ValueError, match="^max_workers must be greater than 0$"):
        dtm.start(sq, 2)
    assert set(proctools.live_children()) <= before  # no worker was started


def test_max_workers_of_another_type(make_executor):
    for bad in ("2", 2.0, True, None.__class__):
        with pytest.raises(TypeError, match="max_workers"):
            DTMExecutor(bad)
    np = pytest.importorskip("numpy")
    assert make_executor(np.int64(1)).max_workers == 1  # an integer of another type is fine


# -- 5. the constructor's keywords, transports and environment --------------------------------
@pytest.mark.parametrize(
    "kwargs, name, hint",
    [
        ({"max_worker": 2}, "max_worker", "max_workers"),
        ({"max_thread": 4}, "max_thread", "max_threads"),
        ({"tranport": "local"}, "tranport", "transport"),
        ({"hostfle": "hosts.txt"}, "hostfle", "hostfile"),
        ({"taskGranularty": 0.1}, "taskGranularty", "taskGranularity"),
        ({"frobnicate": True}, "frobnicate", None),
    ],
)
def test_a_mistyped_keyword_is_a_TypeError_naming_it(kwargs, name, hint, proctools):
    before = set(proctools.live_children())
    with pytest.raises(TypeError, match=f"unexpected keyword argument '{name}'") as info:
        DTMExecutor(1, **kwargs)
    if hint is not None:
        assert f"did you mean '{hint}'?" in str(info.value)
    assert set(proctools.live_children()) <= before  # no worker was started


def test_dtm_setOptions_keeps_dtm_warnings_for_unknown_names():
    dtm.setOptions(max_workers=1, bogusOption=3)
    with pytest.warns(dtm.DTMOptionWarning, match="bogusOption") as rec:
        assert dtm.start(dtm.apply, sq, 3) == 9
    assert [w.filename for w in rec] == [HERE]  # at the line that called dtm.start


def test_warnings_point_at_the_callers_line(tmp_path):
    with pytest.warns(dtm.DTMOptionWarning, match="traceDir") as rec:
        ex = DTMExecutor(1, traceDir=str(tmp_path))  # without setTraceMode: no effect
    ex.shutdown()
    assert rec[0].filename == HERE
    dtm.setOptions(max_workers=1, traceDir=str(tmp_path))
    with pytest.warns(dtm.DTMOptionWarning, match="traceDir") as rec:
        dtm.start(dtm.apply, sq, 3)
    assert [w.filename for w in rec] == [HERE]
    with pytest.warns(dtm.DTMOptionWarning, match="positional") as rec:
        dtm.setOptions("printSummary")
    assert rec[0].filename == HERE


@pytest.mark.parametrize("how", ["hostfile", "hosts"])
def test_hostfile_or_hosts_imply_the_tcp_transport(make_executor, tmp_path, how):
    hostfile = tmp_path / "hosts.txt"
    hostfile.write_text("localhost slots=2\n")  # only localhost: local workers, no ssh
    kw = {"hostfile": str(hostfile)} if how == "hostfile" else {"hosts": ["localhost slots=2"]}
    ex = make_executor(**kw)
    assert ex._kind == "tcp" and type(ex._pool).__name__ == "TcpPool" and ex.max_workers == 2
    assert ex.apply(sq, 7) == 49


def test_options_of_another_transport(make_executor, monkeypatch):
    with pytest.raises(ValueError, match=r"hosts= is an option of the .tcp. transport.*.local."):
        DTMExecutor(1, transport="local", hosts=["localhost"])
    with pytest.raises(ValueError, match="tls_cert= is an option of the 'tcp' transport"):
        DTMExecutor(1, transport="local", tls_cert="cert.pem")
    # transport="auto": a script may carry TCP settings for the runs that use TCP
    ex = make_executor(1, connect_timeout=5.0)
    assert ex._kind == "local" and ex.apply(sq, 2) == 4
    monkeypatch.setenv("DTM_EXECUTOR_TRANSPORT", "local")
    with pytest.raises(ValueError, match="hosts=.*DTM_EXECUTOR_TRANSPORT='local'"):
        DTMExecutor(1, hosts=["localhost"])


@pytest.mark.parametrize("name", ["LOCAL", "Local", " local "])
def test_transport_names_are_case_insensitive(make_executor, monkeypatch, name):
    assert make_executor(1, transport=name)._kind == "local"
    monkeypatch.setenv("DTM_EXECUTOR_TRANSPORT", name)
    assert make_executor(1)._kind == "local"


def test_bad_transport_names(monkeypatch):
    with pytest.raises(ValueError, match="unknown transport 'pigeon'"):
        DTMExecutor(1, transport="pigeon")
    with pytest.raises(TypeError, match="transport must be a string"):
        DTMExecutor(1, transport=None)
    monkeypatch.setenv("DTM_EXECUTOR_TRANSPORT", "pigeon")
    with pytest.raises(ValueError, match="DTM_EXECUTOR_TRANSPORT='pigeon'") as info:
        DTMExecutor(1)
    assert "'local'" in str(info.value)  # and what it may be


def test_the_option_lists_match_the_code():
    """The TCP transport's registered options (what DTMExecutor accepts for each transport, checked before any worker
    starts) must list exactly what the pools read; EXECUTOR_KEYWORDS, DTMExecutor's parameters."""
    import inspect
    import re

    from dtm_executor import _transports
    from dtm_executor._transports import tcp

    read = set(re.findall(r'_pop\(options, "(\w+)"', inspect.getsource(tcp.TcpPool)))
    assert read == set(_transports.options_of("tcp") or ())
    params = [p for p in inspect.signature(DTMExecutor.__init__).parameters.values()
              if p.name != "self" and p.kind is not p.VAR_KEYWORD]
    assert [p.name for p in params] == list(_options.EXECUTOR_KEYWORDS)

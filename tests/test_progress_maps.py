"""``progress=True`` (and ``dtm.setOptions(progress=True)``) covers every mapping call."""

from __future__ import annotations

import logging
import re
from typing import Any, Iterator

import pytest

from dtm_executor import _options, _progress, dtm

pytestmark = pytest.mark.timeout(120)


def sq(x):
    return x * x


def odd(x):
    return x % 2 == 1


def one():
    return 1


def evaluate(ind):
    return (sum(ind),)


@pytest.fixture(autouse=True)
def _clean_options() -> Iterator[None]:
    _options.reset_global()
    yield
    _options.reset_global()


@pytest.fixture
def progress_log(monkeypatch, caplog) -> Any:
    """The logging fallback of the bars (deterministic lines): returns a function giving the
    final "N/N items" counts logged since the last call."""
    monkeypatch.setattr(_progress, "_tqdm_class", lambda: None)
    caplog.set_level(logging.INFO, logger="dtm_executor")
    seen = [0]

    def finished() -> list[int]:
        recs = caplog.records[seen[0]:]
        seen[0] = len(caplog.records)
        out = []
        for r in recs:
            m = re.match(r"\w+\(\w+\): (\d+)/(\d+) items \(100%\) done in", r.getMessage())
            if m and m.group(1) == m.group(2):
                out.append(int(m.group(1)))
        return out

    return finished


def _calls(ex: Any) -> list[tuple[str, Any, int]]:
    """(name, call, items): each mapping call, over a different number of items."""
    return [
        ("Executor.map", lambda: list(ex.map(sq, range(11))), 11),
        ("Executor.map, two iterables", lambda: list(ex.map(pow, range(12), [2] * 12)), 12),
        ("map_async", lambda: ex.map_async(sq, range(13)).get(), 13),
        ("imap", lambda: list(ex.imap(sq, range(14))), 14),
        ("imap_unordered", lambda: list(ex.imap_unordered(sq, range(15), 3)), 15),
        ("dtm.map", lambda: dtm.map(sq, range(16)), 16),
        ("dtm.map_async", lambda: dtm.map_async(sq, range(17)).get(), 17),
        ("dtm.imap", lambda: list(dtm.imap(sq, range(18))), 18),
        ("dtm.imap_unordered", lambda: list(dtm.imap_unordered(sq, range(19), 2)), 19),
        ("filter", lambda: dtm.filter(odd, range(20)), 20),
        ("repeat", lambda: dtm.repeat(one, 21), 21),
    ]


def test_every_mapping_call_shows_progress(make_executor, progress_log):
    ex = make_executor(2, progress=True)
    missing = []
    for name, call, n in _calls(ex):
        call()
        if progress_log() != [n]:
            missing.append(name)
    assert not missing


def test_dtm_setOptions_progress_covers_every_mapping_call(progress_log):
    from dtm_executor import current_executor

    def main():
        missing = []
        for name, call, n in _calls(current_executor()):
            call()
            if progress_log() != [n]:
                missing.append(name)
        return missing

    dtm.setOptions(max_workers=2, progress=True)
    assert dtm.start(main) == []


def test_deap_toolbox_map_shows_progress(make_executor, progress_log):
    base = pytest.importorskip("deap.base")
    ex = make_executor(2, progress=True)
    pop = [[i, i + 1] for i in range(23)]
    for registered in (ex.map, dtm.map):
        toolbox = base.Toolbox()
        toolbox.register("map", registered)
        toolbox.register("evaluate", evaluate)
        assert list(toolbox.map(toolbox.evaluate, pop)) == [(2 * i + 1,) for i in range(23)]
        assert progress_log() == [23], registered


def test_progress_bar_of_every_kind_with_tqdm(make_executor, capsys):
    pytest.importorskip("tqdm")
    ex = make_executor(2, progress=True)
    ex.map_async(sq, range(31)).get()
    list(ex.imap_unordered(sq, range(32), 4))
    err = capsys.readouterr().err
    assert "31/31" in err and "32/32" in err


def test_no_progress_by_default(make_executor, progress_log):
    ex = make_executor(1)
    for _name, call, _n in _calls(ex):
        call()
    assert progress_log() == []

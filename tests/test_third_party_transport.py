"""A transport from outside the package is one module (tests/pipe_transport.py, written on the
public API only, as "How to add a transport" in docs/design.md says): registered with
`dtm_executor.register_transport`, or found through the ``dtm_executor.transports`` entry-point
group of an installed distribution, it is selected with ``DTMExecutor(transport=name)`` and
passes the whole behaviour suite."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

import pipe_transport
from behaviour_suite import BehaviourMixin, create_executor_tests, kill_worker_process
from dtm_executor import DTMExecutor, register_transport
from dtm_executor import _transports

HERE = Path(__file__).resolve().parent

register_transport("Pipe", pipe_transport.PipePool, options={"label"})


def _install_entry_point(root: Path) -> None:
    """What ``pip install`` of a distribution declaring the entry point leaves on sys.path."""
    info = root / "dtm_pipe_demo-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: dtm-pipe-demo\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[dtm_executor.transports]\npipe-ep = pipe_transport:PipePool\n")


@pytest.fixture(scope="module")
def entry_point(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    root = tmp_path_factory.mktemp("site")
    _install_entry_point(root)
    sys.path.insert(0, str(root))
    try:
        yield
    finally:
        sys.path.remove(str(root))
        _transports._registry.pop("pipe-ep", None)  # loaded from the entry point: forget it


class PipeMixin:
    transport = "pipe"
    lose = staticmethod(kill_worker_process)


class PipeEntryPointMixin:
    transport = "PIPE-EP"  # names are case-insensitive
    lose = staticmethod(kill_worker_process)

    @pytest.fixture(autouse=True)
    def _installed(self, entry_point: None) -> None:
        pass


create_executor_tests(globals(), BehaviourMixin, (PipeMixin, PipeEntryPointMixin),
                      marks=(pytest.mark.timeout(120),))


def test_the_transport_is_selected_by_name_and_takes_its_options() -> None:
    with DTMExecutor(1, transport="pipe", label="mine") as ex:
        assert type(ex._pool) is pipe_transport.PipePool and ex._kind == "Pipe"
        assert ex._pool.describe(1).startswith("mine worker rank 1")
        assert ex.submit(pow, 3, 3).result(timeout=60) == 27
    with pytest.raises(TypeError, match="unexpected keyword argument 'lable'.*did you mean 'label'"):
        DTMExecutor(1, transport="pipe", lable="typo")  # checked before any worker starts


def test_the_entry_point_is_read_only_for_names_not_registered(entry_point: None) -> None:
    assert "pipe-ep" in _transports.names(entry_points=True)
    assert "pipe-ep" not in _transports.names() or _transports.find("pipe-ep") is not None
    entry = _transports.find("Pipe-EP")
    assert entry is not None and entry.options == {"label"}  # from the factory's transport_options
    assert _transports.factory(entry) is pipe_transport.PipePool


def test_a_program_selects_it_with_the_environment_variable(tmp_path: Path, run_script: Any) -> None:
    """As a user would: nothing but the installed entry point and DTM_EXECUTOR_TRANSPORT."""
    site = tmp_path / "site"
    _install_entry_point(site)
    run = run_script(f"""
        import sys
        sys.path[:0] = [{str(site)!r}, {str(HERE)!r}]
        from dtm_executor import DTMExecutor

        def twice(x):
            return 2 * x

        if __name__ == "__main__":
            with DTMExecutor(2) as ex:
                print(type(ex._pool).__name__, ex._kind, sum(ex.map(twice, range(10))), flush=True)
        """, env={**__import__("os").environ, "DTM_EXECUTOR_TRANSPORT": "pipe-ep"})
    assert run.wait(60) == 0, run.stderr
    assert run.stdout.split() == ["PipePool", "pipe-ep", "90"]


def test_register_transport_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="built-in"):
        register_transport("local", pipe_transport.PipePool)
    with pytest.raises(ValueError, match="'auto' is not a transport name"):
        register_transport("Auto", pipe_transport.PipePool)
    with pytest.raises(TypeError, match="must be callable"):
        register_transport("x", 42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'module:attr'"):
        register_transport("x", "pipe_transport.PipePool")
    with pytest.raises(ValueError, match="unknown transport 'pigeon'.*'Pipe'"):
        DTMExecutor(1, transport="pigeon")


def test_a_factory_given_by_name_is_imported_when_used() -> None:
    register_transport("pipe-lazy", "pipe_transport:PipePool")
    try:
        with DTMExecutor(1, transport="pipe-lazy") as ex:
            assert ex.submit(abs, -2).result(timeout=60) == 2
    finally:
        _transports._registry.pop("pipe-lazy", None)


def test_the_transport_uses_the_public_api_only() -> None:
    import ast

    import dtm_executor

    tree = ast.parse((HERE / "pipe_transport.py").read_text())
    used = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("dtm_executor"):
            assert n.module == "dtm_executor", n.module
            used |= {a.name for a in n.names}
        elif isinstance(n, ast.Import):
            assert all(a.name == "dtm_executor" or not a.name.startswith("dtm_executor") for a in n.names)
        elif isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "dtm_executor":
            used.add(n.attr)
    assert used and used <= set(dtm_executor.__all__), used - set(dtm_executor.__all__)

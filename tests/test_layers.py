"""The package's layers (docs/design.md, "Layers"): every import, at module level or inside a
function, points down the stack or stays in its layer, and no set of modules imports itself in a
circle. Read from the source with `ast`, so an import that only runs on some path counts too.

    entry points -> executor -> DTM layer -> transports -> lifecycle -> scheduler -> leaves

``_runtime`` and the ``_scheduler`` package are the same layer (the scheduler, before and after
it became a package).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import dtm_executor

PKG = Path(dtm_executor.__file__).resolve().parent
ROOT = "dtm_executor"

#: (layer, what may be imported from it is everything at its level or below), top to bottom
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("entry points", ("", "__main__", "dtm", "trace")),
    ("executor", ("_executor",)),
    ("DTM layer", ("_control", "_options")),
    ("transports", ("_transports",)),
    ("lifecycle", ("_lifecycle",)),
    ("scheduler", ("_runtime", "_scheduler")),
    ("leaves", ("_errors", "_serial", "_futures", "_map", "_report", "_progress", "_hostfile", "_log")),
]

#: Modules that may be imported only inside functions, and why (start-up time).
LAZY_ONLY = {
    "mpi4py": "importing mpi4py.MPI initializes MPI",
    "ssl": "TLS is for TCP runs only",
    "dtm_executor._transports.tcp": "it imports ssl",
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join([ROOT, *parts])


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def layer_of(module: str) -> int:
    """The index in LAYERS of a module of the package (a name without layer fails the test)."""
    assert module == ROOT or module.startswith(ROOT + ".")
    first = module[len(ROOT) + 1 :].split(".")[0] if module != ROOT else ""
    for i, (_, names) in enumerate(LAYERS):
        if first in names:
            return i
    raise AssertionError(f"{module} is in no layer: add it to LAYERS in tests/test_layers.py "
                         f"and to the layer diagram of docs/design.md")


def _resolve(module: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    if not is_pkg:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, int, bool]]:
    """(imported module, line, inside a function) for every import in ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    lazy_lines: set[int] = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for n in ast.walk(fn):
                if isinstance(n, (ast.Import, ast.ImportFrom)):
                    lazy_lines.add(n.lineno)
    out: list[tuple[str, int, bool]] = []
    for n in ast.walk(tree):
        targets: list[str] = []
        if isinstance(n, ast.Import):
            targets = [a.name for a in n.names]
        elif isinstance(n, ast.ImportFrom):
            base = _resolve(module, is_pkg, n)
            for a in n.names:  # a submodule if there is one by that name, else the module itself
                sub = f"{base}.{a.name}"
                targets.append(sub if sub in modules else base)
        for t in targets:
            out.append((t, n.lineno, n.lineno in lazy_lines))
            if t.startswith(ROOT + "."):  # importing a.b.c runs a.b first: an edge to it too,
                parent = t.rsplit(".", 1)[0]  # unless the importer is inside that package
                while parent != ROOT and not (module + ".").startswith(parent + "."):
                    out.append((parent, n.lineno, n.lineno in lazy_lines))
                    parent = parent.rsplit(".", 1)[0]
    return out


def _graph() -> dict[str, dict[str, int]]:
    modules = _modules()
    graph: dict[str, dict[str, int]] = {m: {} for m in modules}
    for m, path in modules.items():
        for t, line, _ in imports_of(m, path, modules):
            if (t == ROOT or t.startswith(ROOT + ".")) and t != m:
                graph[m].setdefault(t, line)
    return graph


def upward_edges(graph: dict[str, dict[str, int]]) -> list[str]:
    bad = []
    for a, targets in graph.items():
        for b, line in targets.items():
            la, lb = layer_of(a), layer_of(b)
            if lb < la:
                bad.append(f"{a} -> {b} (line {line}: the {LAYERS[la][0]} may not import the {LAYERS[lb][0]})")
    return bad


def find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph.get(m, {})):
            if state.get(t) == 1:
                return stack[stack.index(t):] + [t]
            if t not in state:
                found = visit(t)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_every_module_has_a_layer():
    for m in _modules():
        layer_of(m)


def test_no_import_goes_up_a_layer():
    bad = upward_edges(_graph())
    assert not bad, "imports against the layers:\n  " + "\n  ".join(bad)


def test_no_import_cycle():
    cycle = find_cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_checks_catch_what_they_are_for():
    """The rule itself: an upward edge and a cycle are found, and named."""
    g = {"dtm_executor._transports.mpi": {"dtm_executor._executor": 7},
         "dtm_executor._executor": {"dtm_executor._transports.mpi": 3}}
    assert upward_edges(g) == ["dtm_executor._transports.mpi -> dtm_executor._executor (line 7: the "
                               "transports may not import the executor)"]
    assert find_cycle(g) == ["dtm_executor._executor", "dtm_executor._transports.mpi", "dtm_executor._executor"]
    assert layer_of("dtm_executor._scheduler.node") == layer_of("dtm_executor._runtime")


def test_lazy_imports_are_the_slow_ones_and_say_why():
    """Inside functions, the package imports only what costs start-up time, with a comment saying
    so; mpi4py, ssl and the TCP transport are never imported at module level (but by the TCP
    transport itself, which the registry imports when a TCP executor starts)."""
    modules = _modules()
    bad = []
    for m, path in modules.items():
        lines = path.read_text().splitlines()
        for t, line, lazy in imports_of(m, path, modules):
            slow = [why for x, why in LAZY_ONLY.items() if t == x or t.startswith(x + ".")]
            if slow and not lazy and m not in LAZY_ONLY:  # (a lazily loaded module may import them)
                bad.append(f"{m}:{line} imports {t} at module level ({slow[0]})")
            if lazy and (slow or t.startswith(ROOT + ".")):
                text = lines[line - 1] + (lines[line - 2] if line >= 2 else "")
                if "#" not in text:
                    bad.append(f"{m}:{line} imports {t} inside a function without a comment saying why")
    assert not bad, "\n".join(bad)


def test_importing_the_package_loads_no_transport_dependency():
    code = ("import sys, dtm_executor; "
            "print(sorted(m for m in ('ssl', 'mpi4py', 'importlib.metadata', "
            "'dtm_executor._transports.tcp', 'dtm_executor._transports.local', "
            "'dtm_executor._transports.memory') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr

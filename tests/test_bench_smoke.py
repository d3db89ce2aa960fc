"""The benchmark script still runs: a short ``--quick`` run of two cases with every executor (it
never judges speed; it checks that the driver, the baselines and the JSON output work)."""

from __future__ import annotations

import importlib.util
import json
import os
from typing import Any, Callable

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "bench.py")


@pytest.mark.timeout(300)
def test_quick_run_measures_every_executor(run_script: Callable[..., Any], tmp_path: Any) -> None:
    out = tmp_path / "bench.json"
    run = run_script(f"""
        import subprocess, sys
        sys.exit(subprocess.call([sys.executable, {BENCH!r}, "--quick", "--only", "submit,import",
                                  "--json", {str(out)!r}]))
    """)
    assert run.wait(240) == 0, run.stdout + run.stderr
    assert "DTMExecutor" in run.stdout and "mp.Pool" in run.stdout
    rows = {r["case"]: r for r in json.loads(out.read_text())["rows"]}
    submit = next(r for c, r in rows.items() if "submit" in c)
    assert submit["ours"] > 0 and submit["base"]["pool"] > 0 and submit["base"]["ppe"] > 0
    assert submit["ratios"]["pool"] > 0
    have_loky = importlib.util.find_spec("loky") is not None
    if have_loky:
        assert submit["base"]["loky"] > 0
    else:  # an optional baseline that is missing is reported, not fatal
        assert submit["base"]["loky"] is None
        assert any("loky: not installed" in n for n in submit["notes"])
    imp = next(r for c, r in rows.items() if "import" in c)
    assert imp["ours"] is not None and imp["base"]["pool"] is not None

"""benchmarks/loop.py's table: medians, ratios to the floor's median, targets met or not."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _loop():
    spec = importlib.util.spec_from_file_location("bench_loop", BENCH / "loop.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_loop", module)   # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _rows(table: str) -> dict[str, list[str]]:
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()[2:]]
    return {r[0]: r[1:] for r in rows}


def test_table_medians_ratios_and_verdicts():
    loop = _loop()
    samples = {"floor": [4.0, 5.0, 4.5], "cold_exec": [6.0, 5.0, 9.0], "warm_exec": [1.0, 2.0, 1.5],
               "on_exec": [0.3], "help": [0.6, 0.5, 0.7], "matrix": [31.0], "on_probe": []}
    rows = _rows(loop.format_table(samples))
    what = {f.key: f.what for f in loop.FIGURES}
    # the last column: the median of the rounds' own ratios (6/4, 5/5, 9/4.5 → 1.5), "—" unless
    # the figure was sampled in every round
    assert rows[what["floor"]] == ["4.50 s", "1.00×", "—", "", "1.00×"]
    assert rows[what["cold_exec"]] == ["6.00 s", "1.33×", "≤ 1.3×", "**not met**", "1.50×"]
    assert rows[what["warm_exec"]] == ["1.50 s", "0.33×", "≤ 0.35×", "met", "0.33×"]
    assert rows[what["on_exec"]] == ["0.30 s", "0.07×", "≤ 0.1×", "met", "—"]
    assert rows[what["help"]] == ["0.60 s", "0.13×", "—", "", "0.15×"]
    assert rows[what["matrix"]] == ["31.00 s", "6.89×", "≤ 30 s", "**not met**", "—"]
    assert what["on_probe"] not in rows and what["warm_probe"] not in rows   # skipped: no row
    assert list(rows) == [f.what for f in loop.FIGURES if samples.get(f.key)]   # the issue's order


def test_every_figure_of_the_issue_is_measured():
    loop = _loop()
    assert {f.key for f in loop.FIGURES} == {"floor", "cold_exec", "warm_exec", "on_exec", "on_probe",
                                            "warm_probe", "help", "matrix"}
    assert all(f.met(1.0, 1.0) is None for f in loop.FIGURES if f.key in ("floor", "help"))

"""``--repeat N``: load → trigger → unload cycles on one VM, memory after each, a leak verdict."""
from __future__ import annotations

import json

import pytest

from vmprobe import modules
from vmprobe.config import TEMPLATES_DIR


def _cycles_ok(d: dict, n: int) -> None:
    assert [c["cycle"] for c in d["cycles"]] == list(range(1, n + 1))
    for c in d["cycles"]:
        assert c["verdict"] == "pass" and c["failed"] == [] and c["error"] is None, c
        assert c["mem_available_kb"] > 0 and c["sunreclaim_kb"] > 0 and c["seconds"] > 0
    assert d["leak"]["before"]["sunreclaim_kb"] > 0


def test_fork_probe_cycles_pass_without_a_leak(probe_check):
    report = probe_check(repeat=6, sysrq=False)
    d = report.to_dict()
    assert d["verdict"] == "pass", report.summary()
    _cycles_ok(d, 6)
    assert all(c["hits"] > 0 and c["mechanism"] == "ftrace" for c in d["cycles"])
    assert d["leak"]["verdict"] == "no leak" and d["leak"]["threshold_kb_per_cycle"] == 16
    assert {"6 load/unload cycles", "no memory leak"} <= {c.name for c in report.checks if c.ok}


def test_a_kmalloc_per_hit_is_called_a_leak_within_10_cycles(kernel, probe_check):
    leak = next(m for m in modules.build(TEMPLATES_DIR / "splats", kernel) if m.name == "vmprobe_splat_leak")
    report = probe_check(leak, symbol="kernel_clone", repeat=10, sysrq=False, registers=False)
    d = report.to_dict()
    print(report.summary())
    _cycles_ok(d, 10)   # every cycle's own checks pass: only the leak fails it
    assert d["leak"]["verdict"] == "leak", d["leak"]
    assert d["leak"]["growth_kb_per_cycle"] > d["leak"]["threshold_kb_per_cycle"]
    assert d["verdict"] == "fail"
    assert [c.name for c in report.checks if c.ok is False] == ["no memory leak"]


@pytest.mark.slow
def test_repeat_20_of_the_fork_probe_through_the_cli(tmp_path, kernel, vmprobe_cli, accel, no_leaks):
    out = tmp_path / "report.json"
    res = vmprobe_cli("probe", "--kernel", kernel.spec, "--accel", accel, "--repeat", "20", "--json", str(out),
                      timeout=900)
    assert res.returncode == 0, res.stdout + res.stderr
    d = json.loads(out.read_text())
    _cycles_ok(d, 20)
    assert d["leak"]["verdict"] == "no leak" and d["repro"]["repeat"] == 20
    assert "cycles    20: 20 passed; leak: no leak" in res.stdout

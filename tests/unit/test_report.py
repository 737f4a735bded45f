"""vmprobe.check.report: verdict logic and the JSON shape."""
from __future__ import annotations

import json

import pytest

from vmprobe.check.report import ProbeReport


def test_empty_report_passes():
    assert ProbeReport().verdict == "pass"


def test_passed_and_skipped_checks_pass():
    r = ProbeReport()
    assert r.check("module loads", True) is True
    assert r.check("optimized", None, "CONFIG_OPTPROBES is off") is False
    assert r.verdict == "pass"
    assert [c.ok for c in r.checks] == [True, None]


@pytest.mark.parametrize("spoil", ["check", "crash", "error"])
def test_any_failure_fails(spoil):
    r = ProbeReport()
    r.check("module loads", True)
    if spoil == "check":
        assert r.check("hits counted", False, "0 hits, expected >= 1") is False
    elif spoil == "crash":
        r.crashes.append({"kind": "bug", "title": "BUG: kernel NULL pointer dereference"})
    else:
        r.error = "QEMU died"
    assert r.verdict == "fail"
    assert r.to_dict()["verdict"] == "fail"


def test_to_dict_keys_and_values():
    r = ProbeReport(kernel={"release": "6.1.0-13-cloud-amd64", "arch": "x86_64"},
                    probe={"symbol": "kernel_clone", "offset": 0, "mechanism": "ftrace"},
                    bytes={"before": "0f1f440000", "armed": "e8deadbeef"},
                    hits=3, registers_at_hit={"rip": "0xffffffff8ca941a0"},
                    timings={"boot": 1.23456, "probe": 0.5})
    r.check("hits counted", True, "3 hits")
    d = r.to_dict()
    for key in ("verdict", "kernel", "probe", "bytes", "hits", "registers_at_hit", "crashes", "timings"):
        assert key in d, key
    assert d["verdict"] == "pass"
    assert d["kernel"]["release"] == "6.1.0-13-cloud-amd64"
    assert d["probe"]["mechanism"] == "ftrace"
    assert d["bytes"]["armed"] == "e8deadbeef"
    assert d["hits"] == 3
    assert d["registers_at_hit"] == {"rip": "0xffffffff8ca941a0"}
    assert d["crashes"] == []
    assert d["timings"] == {"boot": 1.235, "probe": 0.5}
    assert d["checks"] == [{"name": "hits counted", "ok": True, "detail": "3 hits"}]
    assert d["error"] is None
    json.dumps(d)  # serialisable


def test_write_json_round_trips(tmp_path):
    r = ProbeReport(hits=0)
    r.check("hits counted", False, "no hit")
    out = tmp_path / "report.json"
    r.write_json(out)
    data = json.loads(out.read_text())
    assert data["verdict"] == "fail"
    assert data["hits"] == 0


def test_summary_lists_checks_crashes_and_error():
    r = ProbeReport(kernel={"release": "6.1.0-13-cloud-amd64"}, timings={"boot": 2.0, "probe": 1.0})
    r.check("module loads", True)
    r.check("hits counted", False, "0 hits")
    r.check("optimized", None)
    r.crashes.append({"title": "kernel panic: Fatal exception"})
    r.error = "gdb detached"
    text = r.summary()
    assert text.startswith("vmprobe probe: FAIL  kernel 6.1.0-13-cloud-amd64")
    assert "[ok  ] module loads" in text
    assert "[FAIL] hits counted: 0 hits" in text
    assert "[skip] optimized" in text
    assert "CRASH kernel panic: Fatal exception" in text
    assert "ERROR gdb detached" in text
    assert "(total 3.0s)" in text

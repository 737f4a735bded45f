"""``vmprobe matrix``: the real thing on bookworm, its outputs, and its limits."""
from __future__ import annotations

import json
import time
import xml.etree.ElementTree as ET

import pytest

from vmprobe.runs import junit, matrix


@pytest.mark.vm
def test_matrix_on_bookworm(tmp_path, vmprobe_cli, accel, no_leaks):
    out_json, out_xml = tmp_path / "m.json", tmp_path / "m.xml"
    res = vmprobe_cli("matrix", "--kernels", "debian:bookworm", "--accel", accel,
                      "--json", str(out_json), "--junit", str(out_xml), timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    # live progress on stderr, the table on stdout
    assert "debian:bookworm: booted under" in res.stderr
    assert "debian:bookworm: optimized: PASS (optimized," in res.stderr
    header, row = res.stdout.splitlines()[:2]
    assert header.split() == ["KERNEL", "RELEASE", "BOOT", "entry", "int3", "optimized"]
    assert row.startswith("debian:bookworm") and "6.1.0-" in row
    for cell in ("pass ftrace", "pass int3", "pass optimized"):
        assert cell in row
    assert "PASS: 3/3 checks passed on 1 kernel(s)" in res.stdout

    data = json.loads(out_json.read_text())
    assert data["verdict"] == "pass" and data["checks"] == ["entry", "int3", "optimized"]
    (k,) = data["kernels"]
    assert k["kernel"]["release"].startswith("6.1.0-") and k["error"] is None
    assert {"fetch", "build", "boot"} <= set(k["timings"])
    got = {c["name"]: (c["offset"], c["post_handler"], c["mechanism"], c["report"]["verdict"])
           for c in k["checks"]}
    assert got == {"entry": (0, True, "ftrace", "pass"), "int3": (5, True, "int3", "pass"),
                   "optimized": (5, False, "optimized", "pass")}
    for c in k["checks"]:
        assert c["hits"] > 0 and c["time"] > 0
        assert c["report"]["bytes"]["after"] == c["report"]["bytes"]["before"]
        assert any(x["name"] == f"mechanism is {c['expected_mechanism']}" and x["ok"]
                   for x in c["report"]["checks"])
        # what `vmprobe repro` needs to run the same check again
        r = c["repro"]
        assert r == c["report"]["repro"] and r["kernel"]["spec"] == k["kernel"]["spec"]
        assert r["options"]["offset"] == {"entry": 0}.get(c["name"], "after-entry")
        assert r["expect_mechanism"] == c["expected_mechanism"] and r["machine"]["accel"] in ("kvm", "tcg")

    root = ET.parse(out_xml).getroot()
    suite = root.find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("3", "0", "0")
    cases = suite.findall("testcase")
    assert [(c.get("classname"), c.get("name")) for c in cases] == [
        ("debian:bookworm", "entry"), ("debian:bookworm", "int3"), ("debian:bookworm", "optimized")]
    for case in cases:
        assert case.find("failure") is None and case.find("error") is None
        assert float(case.get("time")) > 0
        assert "vmprobe-hit nonce=" in case.find("system-out").text
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        assert props["mechanism"] == props["expected_mechanism"]


@pytest.mark.vm
def test_kernel_that_runs_out_of_time_is_stopped_and_reported(tmp_path, vmprobe_cli, accel, no_leaks):
    """A kernel past --kernel-timeout: its worker is stopped (VM included) and every check is an error."""
    out_xml = tmp_path / "m.xml"
    t0 = time.monotonic()
    # a cold boot alone takes longer than 2 s under TCG (a warm restore might not)
    res = vmprobe_cli("matrix", "--kernels", "debian:bookworm", "--accel", accel, "--kernel-timeout", "2",
                      "--cold", "--checks", "entry,int3", "--junit", str(out_xml), timeout=300)
    assert res.returncode == 1, res.stdout + res.stderr
    assert time.monotonic() - t0 < 90
    assert "did not finish within 2s" in res.stdout
    suite = ET.parse(out_xml).getroot().find("testsuite")
    assert (suite.get("tests"), suite.get("errors")) == ("2", "2")
    assert all("did not finish within 2s" in c.find("error").get("message") for c in suite.iter("testcase"))


def test_bad_arguments_fail_before_any_vm(vmprobe_cli):
    res = vmprobe_cli("matrix", "--kernels", "debian:bookworm,debian:potato", timeout=60)
    assert res.returncode == 64 and "unknown Debian suite 'potato'" in res.stderr
    res = vmprobe_cli("matrix", "--kernels", "debian:bookworm", "--checks", "entry,kretprobe", timeout=60)
    assert res.returncode == 2 and "unknown check(s) kretprobe" in res.stderr


def _sample() -> dict:
    report = {"verdict": "fail", "checks": [{"name": "site armed", "ok": True, "detail": ""},
                                            {"name": "mechanism is int3", "ok": False, "detail": "got optimized"}]}
    ok = {"name": "entry", "verdict": "pass", "mechanism": "ftrace", "hits": 5, "time": 3.2, "offset": 0,
          "post_handler": True, "expected_mechanism": "ftrace", "error": None, "summary": "",
          "report": {"verdict": "pass", "checks": []}, "console_tail": "ok \x1b[0m\x00 tail"}
    bad = {**ok, "name": "int3", "verdict": "fail", "mechanism": "optimized", "expected_mechanism": "int3",
           "summary": "vmprobe probe: FAIL …", "report": report}
    run = matrix.MatrixRun(["debian:bookworm", "debian:sid"], ["entry", "int3"], jobs=2, machine_kw={})
    run.results = {
        "debian:bookworm": {"spec": "debian:bookworm", "kernel": {"release": "6.1.0-56-cloud-amd64"},
                            "error": None, "timings": {"boot": 4.0}, "checks": [ok, bad], "console_tail": ""},
        "debian:sid": matrix._failed("debian:sid", "vmprobe: boot timeout: timed out after 120s"),
    }
    return run.assemble(42.0)


def test_outputs_of_a_failing_matrix(tmp_path):
    m = _sample()
    assert m["verdict"] == "fail"
    table = matrix.format_table(m)
    assert "pass ftrace 5h 3.2s" in table and "fail optimized 5h 3.2s" in table
    assert "FAIL: 1/4 checks passed on 2 kernel(s) in 42.0s with 2 worker(s)" in table
    assert "debian:sid: vmprobe: boot timeout" in table

    matrix.write_junit(m, tmp_path / "m.xml")
    suite = ET.parse(tmp_path / "m.xml").getroot().find("testsuite")   # parses: control chars escaped
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("4", "1", "2")
    cases = {(c.get("classname"), c.get("name")): c for c in suite.iter("testcase")}
    failure = cases[("debian:bookworm", "int3")].find("failure")
    assert failure.get("message") == "mechanism is int3: got optimized"
    assert failure.text == "vmprobe probe: FAIL …"
    assert cases[("debian:bookworm", "entry")].find("system-out").text == "ok \\x1b[0m\\x00 tail"
    error = cases[("debian:sid", "entry")].find("error")
    assert error.get("message") == "vmprobe: boot timeout: timed out after 120s"

    matrix.write_json(m, tmp_path / "m.json")
    data = json.loads((tmp_path / "m.json").read_text())
    assert [c["verdict"] for k in data["kernels"] for c in k["checks"]] == ["pass", "fail", "error", "error"]


def test_junit_text_is_always_valid_xml():
    text = "".join(chr(i) for i in range(0, 0x2000)) + "\ud800\ufffe\U0001f600"
    element = junit.to_element("s", [junit.TestCase("c", "n", status="error", message=text, system_out=text)])
    ET.fromstring(ET.tostring(element))

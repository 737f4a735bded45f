"""``vmprobe matrix``'s outputs from a sample result: the table, JUnit XML, JSON."""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET

from vmprobe.runs import junit, matrix


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


def test_a_skipped_scenario_is_not_a_failure(tmp_path):
    skipped = {"name": "fault-handler", "verdict": "skip", "mechanism": None, "hits": None, "time": 0.0,
               "error": None, "summary": "", "console_tail": "",
               "report": {"verdict": "skip", "checks": [], "skipped": "kernel 6.1 lacks it: removed in 5.14"}}
    run = matrix.MatrixRun(["debian:bookworm"], ["fault-handler"], jobs=1, machine_kw={})
    run.results = {"debian:bookworm": {"spec": "debian:bookworm", "kernel": {"release": "6.1.0-57-cloud-amd64"},
                                       "error": None, "timings": {"boot": 4.0}, "checks": [skipped],
                                       "console_tail": ""}}
    m = run.assemble(10.0)
    assert m["verdict"] == "pass"
    table = matrix.format_table(m)
    assert "skip - 0.0s" in table and "0/1 checks passed (1 skipped: not for that kernel)" in table
    matrix.write_junit(m, tmp_path / "m.xml")
    suite = ET.parse(tmp_path / "m.xml").getroot().find("testsuite")
    assert (suite.get("failures"), suite.get("errors"), suite.get("skipped")) == ("0", "0", "1")
    assert "removed in 5.14" in suite.find("testcase").find("skipped").get("message")

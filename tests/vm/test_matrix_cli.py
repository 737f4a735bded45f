"""``vmprobe matrix``: the real thing on bookworm, and its limits (time, bad arguments)."""
from __future__ import annotations

import json
import time
import xml.etree.ElementTree as ET

import pytest


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
def test_matrix_over_the_serial_transport(tmp_path, vmprobe_cli, accel, no_leaks):
    """--transport reaches every worker's VM: the check's commands went over the serial agent."""
    out_json = tmp_path / "m.json"
    res = vmprobe_cli("matrix", "--kernels", "debian:bookworm", "--accel", accel, "--checks", "int3",
                      "--transport", "serial", "--json", str(out_json), timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    (k,) = json.loads(out_json.read_text())["kernels"]
    (c,) = k["checks"]
    assert c["verdict"] == "pass" and c["report"]["repro"]["machine"]["transport"] == "serial"


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

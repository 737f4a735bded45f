"""``vmprobe repro``: failing reports made on purpose, re-run for real, and the kept VM."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from terminal import terminal  # tests/vm/terminal.py


@pytest.fixture(scope="module")
def failing_report(tmp_path_factory, accel):
    """A probe at kernel_clone+0 (ftrace) told to expect an optimized jump: a real FAIL."""
    path = tmp_path_factory.mktemp("repro") / "report.json"
    res = subprocess.run([sys.executable, "-m", "vmprobe", "probe", "--kernel", "debian:bookworm",
                          "--accel", accel, "--no-sysrq", "--expect-mechanism", "optimized",
                          "--json", str(path)], capture_output=True, text=True, timeout=600,
                         stdin=subprocess.DEVNULL)
    assert res.returncode == 1, res.stdout + res.stderr
    return path


def test_report_carries_the_inputs(failing_report):
    d = json.loads(failing_report.read_text())
    r = d["repro"]
    assert re.fullmatch(r"debian:bookworm/cloud-amd64@6\.1\.0-\d+", r["kernel"]["spec"])
    assert r["kernel"]["version"] == d["kernel"]["version"] and r["kernel"]["packages"]
    assert r["module"]["source"] == "builtin:vmprobe_fork" and len(r["module"]["sha256"]) == 64
    assert r["options"]["offset"] == 0 and r["options"]["post_handler"] is True
    assert r["options"]["sysrq"] is False and r["expect_mechanism"] == "optimized"
    assert r["machine"]["accel"] == d["machine"]["accel"]


def test_repro_reproduces_the_failure(failing_report, vmprobe_cli, no_leaks):
    res = vmprobe_cli("repro", str(failing_report))       # no TTY: re-run and exit
    assert res.returncode == 1, res.stdout + res.stderr
    assert "[FAIL] mechanism is optimized: got ftrace" in res.stdout
    assert re.search(r"probe: REPRODUCED — now FAIL \(mechanism is optimized\)", res.stdout), res.stdout
    assert "was FAIL (mechanism is optimized)" in res.stderr


def test_repro_reproduces_a_refusal(tmp_path, vmprobe_cli, accel, no_leaks):
    report = tmp_path / "refused.json"
    res = vmprobe_cli("probe", "--kernel", "debian:bookworm", "--accel", accel, "--no-sysrq",
                      "--symbol", "no_such_function_xyz", "--json", str(report))
    assert res.returncode == 75, res.stdout + res.stderr          # module load failed
    assert json.loads(report.read_text())["repro"]["options"]["symbol"] == "no_such_function_xyz"
    res = vmprobe_cli("repro", str(report))
    assert res.returncode == 75, res.stdout + res.stderr
    assert re.search(r"REPRODUCED — now ERROR \(module load failed in phase insmod: symbol "
                     r"no_such_function_xyz not found", res.stdout), res.stdout


def test_repro_keeps_the_vm_on_a_terminal(failing_report, no_leaks):
    """On a TTY: re-run, then a shell in the guest and a gdb script to attach from elsewhere."""
    with terminal([sys.executable, "-m", "vmprobe", "repro", str(failing_report)]) as t:
        t.expect(r"REPRODUCED — now FAIL", 600)        # the outcome comes first
        m = t.expect(r"attach gdb \(another terminal\): (gdb --nx -q -x (\S+))", 120)
        gdb = subprocess.run(["gdb", "--nx", "-q", "-x", m[2], "--batch", "-ex", "info symbol kernel_clone",
                              "-ex", "detach"], capture_output=True, text=True, timeout=120,
                             stdin=subprocess.DEVNULL)
        assert "kernel_clone in section .kallsyms" in gdb.stdout, gdb.stdout + gdb.stderr
        t.expect(r"# ", 60)                              # the guest's shell prompt
        t.send(b"uname -r; echo DONE-$((40+2))\n")
        t.expect(r"6\.1\.0-\d+-cloud-amd64\s+DONE-42", 60)
        t.send(b"exit\n")
        assert t.proc.wait(60) == 1, t.text

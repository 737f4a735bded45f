"""The built-in scenarios (check/scenarios/) in real guests: each claim proven from the
guest's user space and through gdb, through the pytest plugin and the CLI."""
from __future__ import annotations

import json

import pytest

from vmprobe.check.probe import ProbeOptions
from vmprobe.check.run import run_check
from vmprobe.check.scenarios import eras
from vmprobe.kernels import get_kernel
from vmprobe.vm.machine import Machine


def _clean(vm) -> None:
    assert vm.run("cat /sys/kernel/debug/kprobes/list").stdout.strip() == ""
    assert "vmprobe_" not in vm.run("cat /proc/modules").stdout


def test_modify_register(vm, probe_check):
    report = probe_check(scenario="modify-register")
    d = report.to_dict()
    assert d["verdict"] == "pass", report.summary()
    s = d["scenario"]
    assert s["seen"] == str(s["value"]) and s["after"] == s["real"] == "0"   # the guest runs as root
    regs = d["registers_at_hit"]
    reg = vm.profile.return_register
    assert int(regs[reg], 16) == s["value"]                                  # gdb: the return register
    assert regs["pc"] == regs["return_address"]
    assert s["rewrites"] >= 2 and s["returns"] >= s["rewrites"]
    assert d["bytes"]["after"] == d["bytes"]["before"] != d["bytes"]["armed"]
    assert set(s["evidence"]) == {"user-space", "gdb", "after rmmod"}
    assert d["crashes"] == []
    _clean(vm)


def test_fault_handler_on_this_kernel(vm, probe_check):
    """pass where struct kprobe has fault_handler (< 5.14), skip (never pass) elsewhere."""
    report = probe_check(scenario="fault-handler")
    if eras.has(vm.kernel.release, "fault_handler"):
        assert report.verdict == "pass", report.summary()
    else:
        assert report.verdict == "skip", report.summary()
        assert "removed in 5.14" in report.skipped and vm.kernel.release in report.skipped
        assert all(c.ok is None for c in report.checks)
    _clean(vm)


def test_fault_handler_on_bullseye(accel, no_leaks):
    kernel = get_kernel("debian:bullseye")
    assert eras.has(kernel.release, "fault_handler")
    with Machine(kernel, accel=accel) as vm:
        run = run_check(vm, None, ProbeOptions(), scenario="fault-handler")
        assert run.error is None, run.error
        d = run.report.to_dict()
        assert d["verdict"] == "pass", run.report.summary()
        s = d["scenario"]
        assert s["provoked"] == 3 and s["fault_calls"] >= 3 and len(s["trapnr"]) == 1
        assert s["nmissed"] >= s["fault_calls"]     # kprobe_fault_handler counts each as missed
        assert d["bytes"]["after"] == d["bytes"]["before"]
        assert d["repro"]["scenario"] == "fault-handler"
        assert d["repro"]["module"]["source"] == "builtin:vmprobe_fault"
        assert vm.run("echo alive").stdout.strip() == "alive"
        _clean(vm)


def test_cli_skip_exits_0(tmp_path, vmprobe_cli, accel, no_leaks):
    out = tmp_path / "r.json"
    res = vmprobe_cli("probe", "--kernel", "debian:bookworm", "--accel", accel, "--scenario", "fault-handler",
                      "--json", str(out), timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SKIP" in res.stdout and "removed in 5.14" in res.stdout
    d = json.loads(out.read_text())
    assert d["verdict"] == "skip" and d["scenario"]["name"] == "fault-handler"


def test_modify_data(vm, probe_check):
    report = probe_check(scenario="modify-data")
    d = report.to_dict()
    assert d["verdict"] == "pass", report.summary()
    s = d["scenario"]
    assert s["seen"] == s["gdb"] == s["value"] != s["original"]       # /proc and gdb: the new name
    assert s["after"] == s["gdb_after"] == s["original"]              # both: the old one after rmmod
    assert s["hits"] >= 1
    _clean(vm)


def _smp_consistent(d: dict, cpus: int) -> None:
    s = d["scenario"]
    per_cpu = {int(c): n for c, n in s["hits_per_cpu"].items()}   # JSON keys are strings
    assert sorted(per_cpu) == list(range(cpus)) and all(n > 0 for n in per_cpu.values())
    assert sum(per_cpu.values()) == s["atomic"] and 0 <= s["plain"] <= s["atomic"]
    assert s["lost_updates"] == s["atomic"] - s["plain"] and s["nmissed"] >= 0   # whatever they are
    assert s["gdb_snapshot"]["atomic"] <= s["atomic"]


def test_smp_two_cpus_from_the_cli(tmp_path, vmprobe_cli, accel, no_leaks):
    out = tmp_path / "smp.json"
    res = vmprobe_cli("probe", "--kernel", "debian:bookworm", "--accel", accel, "--scenario", "smp",
                      "--json", str(out), timeout=400)
    d = json.loads(out.read_text())
    assert res.returncode == 0, res.stdout + res.stderr
    assert d["verdict"] == "pass" and d["machine"]["smp"] == 2          # the scenario's default
    _smp_consistent(json.loads(json.dumps(d)), 2)


def test_smp_from_the_plugin(vm, probe_check):
    report = probe_check(scenario="smp")
    d = json.loads(json.dumps(report.to_dict()))
    assert d["verdict"] == "pass", report.summary()
    _smp_consistent(d, vm.smp)
    _clean(vm)


def test_matrix_scenarios(tmp_path, vmprobe_cli, accel, no_leaks):
    out = tmp_path / "m.json"
    res = vmprobe_cli("matrix", "--kernels", "debian:bookworm", "--accel", accel,
                      "--scenarios", "modify-register,fault-handler", "--json", str(out), timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.split()[:5] == ["KERNEL", "RELEASE", "BOOT", "modify-register", "fault-handler"]
    data = json.loads(out.read_text())
    (k,) = data["kernels"]
    verdicts = {c["name"]: c["verdict"] for c in k["checks"]}
    assert verdicts == {"modify-register": "pass", "fault-handler": "skip"}
    assert k["checks"][0]["repro"]["scenario"] == "modify-register"


@pytest.mark.parametrize("spec", [pytest.param("debian:bookworm/686", id="i386"),
                                  pytest.param("debian:bookworm/arm64", id="arm64", marks=pytest.mark.slow)])
def test_scenarios_on_other_arches(spec, accel, no_leaks):
    """modify-register, modify-data and smp under the arch's own registers, in one 2-CPU guest."""
    kernel = get_kernel(spec)
    with Machine(kernel, accel=accel, smp=2) as vm:
        for name in ("modify-register", "modify-data", "smp"):
            run = run_check(vm, None, ProbeOptions(), scenario=name)
            assert run.error is None, run.error
            d = json.loads(json.dumps(run.report.to_dict()))
            assert d["verdict"] == "pass", run.report.summary()
            s = d["scenario"]
            if name == "modify-register":
                assert int(d["registers_at_hit"][vm.profile.return_register], 16) == s["value"]
                assert s["seen"] == str(s["value"]) and s["after"] == s["real"]
            elif name == "modify-data":
                assert s["seen"] == s["gdb"] == s["value"] and s["after"] == s["gdb_after"] == s["original"]
            else:
                _smp_consistent(d, 2)
        _clean(vm)

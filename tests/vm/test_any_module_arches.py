"""Any module on i386 and arm64: a user's kretprobe and kprobes, discovered from
``kprobes/list``, their kind from the list, their armed bytes decoded by the arch's own
site decoder (int3 on i386, BRK on arm64), their handlers counted by the function tracer,
and the task that hit the first probe named (per-arch current-task reading).

Slow: one VM per arch and two module checks (≈1 min on i386, ≈2 min on arm64 under TCG).
"""
from __future__ import annotations

from pathlib import Path

import pytest
from entry_sites import after_entry  # tests/vm/entry_sites.py

from vmprobe import modules
from vmprobe.arch import Mechanism, profile_for
from vmprobe.check.probe import ProbeOptions, run_probe_check
from vmprobe.formats.elf import e_machine, read_module
from vmprobe.kernels import get_kernel
from vmprobe.vm.machine import Machine

MODULES = Path(__file__).parent / "modules"

pytestmark = pytest.mark.slow


def _check(vm, module, **options) -> dict:
    report = run_probe_check(vm, module, ProbeOptions(builtin_template=False, offset=None, sysrq=False, **options))
    d = report.to_dict()
    assert d["verdict"] == "pass", report.summary()
    assert d["kernel"]["arch"] == vm.profile.name
    assert d["hits_counter"] == "ftrace-function", report.summary()
    for p in d["probes"]:
        before, armed = bytes.fromhex(p["bytes"]["before"]), bytes.fromhex(p["bytes"]["armed"])
        # the arch's decoder on the bytes, independently of the report's own reading
        assert vm.profile.sites.classify(int(p["address"], 16), before, armed).mechanism == p["mechanism"]
        assert p["bytes"]["after"] == p["bytes"]["before"] != p["bytes"]["armed"]
        assert p["hits"] >= 1, report.summary()
    regs = d["registers_at_hit"]
    assert int(regs["pc"], 16) == int(d["probes"][0]["address"], 16)
    # the probe fired at that very stop: its handler entered next by the same task
    assert regs["handler_at_stop"]["address"] is not None and regs["handler_at_stop"]["same_task"] is True, regs
    # the task that hit it: arm64 reads SP_EL0; i386 (no BTF) fs_base + current's per-CPU address
    task = regs["task"]
    assert task is not None, regs.get("task_error")
    assert task["comm"] and task["pid"] >= 0 and isinstance(task["kernel_thread"], bool)
    assert int(task["task_struct"], 16) >= 1 << (vm.profile.bits - 2)   # in the kernel's half
    assert vm.run("cat /sys/kernel/debug/kprobes/list").stdout.strip() == ""
    return d


@pytest.mark.parametrize("spec", ["debian:bookworm/686", "debian:bookworm/arm64"], ids=["i386", "arm64"])
def test_any_module_on_arch(spec, accel, no_leaks):
    kernel = get_kernel(spec)
    profile = profile_for(kernel.arch)
    kretprobe, array = (modules.build(MODULES / name, kernel)[0] for name in ("kretprobe_timing.c", "kprobes_array.c"))
    assert e_machine(read_module(array.path)) == profile.elf_machine
    # a probe on the fentry site rides ftrace where the arch has that; else it is a breakpoint
    at_entry = Mechanism.FTRACE if profile.has_ftrace_probes else profile.breakpoint_mechanism
    with Machine(kernel, accel=accel) as vm:
        _, body = after_entry(vm, "kernel_clone")
        assert body > 0

        d = _check(vm, kretprobe)
        (p,) = d["probes"]
        assert (p["kind"], p["list_type"], p["symbol"], p["offset"]) == ("kretprobe", "r", "kernel_clone", 0)
        assert p["handlers"] == {"entry": "entry_handler", "return": "ret_handler"}
        assert p["entry_hits"] >= 1 and p["mechanism"] == at_entry
        assert any("took" in line for line in d["module"]["kernel_lines"])

        # two kprobes with register_kprobes: the entry, and the body (a post handler: never optimized)
        d = _check(vm, array, module_params=f"second=kernel_clone second_offset={body}")
        assert [(p["kind"], p["list_type"], p["symbol"], p["offset"]) for p in d["probes"]] == [
            ("kprobe", "k", "kernel_clone", 0), ("kprobe", "k", "kernel_clone", body)]
        assert [p["mechanism"] for p in d["probes"]] == [at_entry, profile.breakpoint_mechanism]
        assert d["probes"][1]["handlers"] == {"pre": "pre_second", "post": "post_second"}

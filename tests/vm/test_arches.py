"""i386 and arm64 guests, checked like x86_64: real kernels of those arches in QEMU
(qemu-system-i386 / qemu-system-aarch64), modules cross-built against their
headers, the guest's own busybox and dropbear, gdb-multiarch on the gdbstub.

For each arch, in one VM: the entry probe, a breakpoint probe at a later
instruction (int3 on i386, brk on arm64) with a post handler, and the same
without one (optimized on i386; still brk on arm64, which has no optprobes).
Every check proves the armed bytes, the restored bytes, the handler hits and
the registers (under the arch's own names) at a hardware breakpoint.
"""
from __future__ import annotations

import json
import re

import pytest

from vmprobe import modules
from vmprobe.arch import profile_for
from vmprobe.check.probe import AFTER_ENTRY, ProbeOptions, run_probe_check
from vmprobe.formats.elf import e_machine, read_module
from vmprobe.kernels import get_kernel
from vmprobe.vm.machine import Machine

ARCHES = [
    # spec, uname -m, [(offset, post handler, mechanism, first armed bytes)], register names
    pytest.param("debian:bookworm/686", "i686", [
        (0, True, "ftrace", "e8"),
        (AFTER_ENTRY, True, "int3", "cc"),
        (AFTER_ENTRY, False, "optimized", "e9"),
    ], ("eip", "eflags"), id="i386"),
    pytest.param("debian:bookworm/arm64", "aarch64", [
        (0, True, "brk", "800020d4"),
        (AFTER_ENTRY, True, "brk", "800020d4"),
        (AFTER_ENTRY, False, "brk", "800020d4"),   # no optprobes on arm64: stays a brk
    ], ("pc", "cpsr"), id="arm64"),
    pytest.param("debian:bookworm/686-pae", "i686", [
        (AFTER_ENTRY, True, "int3", "cc"),
    ], ("eip", "eflags"), id="i386-pae", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("spec, uname_m, checks, registers", ARCHES)
def test_arch_probes(spec, uname_m, checks, registers, accel, no_leaks):
    kernel = get_kernel(spec)
    profile = profile_for(kernel.arch)
    module = modules.build(modules.FORK_PROBE, kernel)[0]
    assert e_machine(read_module(module.path)) == profile.elf_machine   # cross-built for the guest
    with Machine(kernel, accel=accel) as vm:
        assert vm.command_line[0] == profile.qemu
        # the guest's own userland: a foreign busybox would not even start as init
        assert vm.run("uname -m").stdout.strip() == uname_m
        assert f"console={profile.console}" in vm.run("cat /proc/cmdline").stdout
        for offset, post, mechanism, armed in checks:
            report = run_probe_check(vm, module, ProbeOptions(offset=offset, post_handler=post))
            d = report.to_dict()
            assert d["verdict"] == "pass", report.summary()
            assert d["kernel"]["arch"] == profile.name
            assert d["probe"]["mechanism"] == mechanism, report.summary()
            assert d["bytes"]["armed"].startswith(armed), report.summary()
            assert d["bytes"]["armed"] != d["bytes"]["before"]
            assert d["bytes"]["after"] == d["bytes"]["before"]
            assert d["hits"] > 0 and d["probe"]["total_hits"]["pre"] >= d["hits"]
            if post:
                assert d["probe"]["post_hits"] > 0
            regs = d["registers_at_hit"]
            assert regs["names"] == list(registers)
            assert int(regs["pc"], 16) == int(d["probe"]["address"], 16)
            assert d["sysrq"] == {"proc": True, "send_key": True, "serial_break": True}
            assert d["crashes"] == []
            if offset == AFTER_ENTRY:
                assert d["probe"]["offset"] > 0        # past the entry sequence, read from the bytes
            # the handler printed the flags register under the arch's own name
            flags_name = "pstate" if kernel.arch == "arm64" else "eflags"
            address = int(d["probe"]["address"], 16)
            line = re.search(rf"handler=pre addr={address:x} ip=([0-9a-f]+) {flags_name}=([0-9a-f]+)",
                             vm.console.text)
            assert line, f"no pre-handler line with {flags_name}= for {address:#x}"
            # x86 reports the ip past the int3 (ftrace: the same), arm64 the brk itself
            assert int(line[1], 16) - address == (0 if kernel.arch == "arm64" else 1)
            assert vm.run("cat /sys/kernel/debug/kprobes/list").stdout.strip() == ""


def test_probe_cli_arm64(tmp_path, vmprobe_cli, accel, no_leaks):
    out = tmp_path / "report.json"
    res = vmprobe_cli("probe", "--kernel", "debian:bookworm/arm64", "--accel", accel, "--offset",
                      "after-entry", "--expect-mechanism", "brk", "--json", str(out), "--no-sysrq")
    assert res.returncode == 0, res.stdout + res.stderr
    d = json.loads(out.read_text())
    assert d["kernel"]["arch"] == "aarch64" and d["verdict"] == "pass"
    assert d["bytes"]["armed"].startswith("800020d4")
    assert d["registers_at_hit"]["names"] == ["pc", "cpsr"]
    assert "-M virt" in d["machine"]["qemu"] and "pauth-impdef=on" in d["machine"]["qemu"]


@pytest.mark.slow
def test_matrix_both_arches(tmp_path, vmprobe_cli, accel, no_leaks):
    out = tmp_path / "matrix.json"
    res = vmprobe_cli("matrix", "--kernels", "debian:bookworm/686,debian:bookworm/arm64", "--jobs", "2",
                      "--accel", accel, "--json", str(out), timeout=900)
    assert res.returncode == 0, res.stdout + res.stderr
    d = json.loads(out.read_text())
    got = {k["kernel"]["arch"]: {c["name"]: c["mechanism"] for c in k["checks"]} for k in d["kernels"]}
    assert got == {"i386": {"entry": "ftrace", "int3": "int3", "optimized": "optimized"},
                   "arm64": {"entry": "brk", "int3": "brk", "optimized": "brk"}}


def test_arm64_restores_warm_over_its_virtio_console(accel, no_leaks):
    """arm64's virt machine has one UART: the control port is a virtio console (hvc0). Two
    restores of one snapshot get their own keys and seed, and the serial agent answers there."""
    kernel = get_kernel("debian:bookworm/arm64")
    with Machine(kernel, accel=accel, warm=True) as first:
        assert first.warm and first._incoming is not None, "arm64 booted cold"
        assert "vmprobe.warm=hvc0" in first.command_line[first.command_line.index("-append") + 1]
        boot_ids = {first.run("cat /proc/sys/kernel/random/boot_id").stdout.strip()}
    with Machine(kernel, accel=accel, warm=True, transport="serial") as second:
        assert second.warm and second._incoming is not None and second.ssh.name == "serial"
        res = second.run("uname -m; cat /proc/sys/kernel/random/boot_id")
        lines = res.stdout.split()
        assert res.status == 0 and lines[0] == "aarch64", res.output
        boot_ids.add(lines[1])
    assert len(boot_ids) == 2, "two restores of one snapshot shared their random state"

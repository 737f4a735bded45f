"""The PLT32 → PC32 rewrite on a real module: the fork probe built here with gcc-12 loses
every PLT32 relocation and still loads, probes and unloads on a real kernel."""
from __future__ import annotations

import subprocess

from vmprobe.formats.relocs import count_type, rewrite_plt32

R_X86_64_PLT32 = 4


def test_rewritten_module_still_loads_and_probes(vm, fork_module, tmp_path):
    if vm.profile.elf_machine != 62:
        return   # x86_64 only: the other arches have no PLT32 rewrite to check
    data = fork_module.path.read_bytes()
    assert count_type(data, R_X86_64_PLT32) > 0
    fixed, edits = rewrite_plt32(data)
    ko = tmp_path / "vmprobe_fork.ko"
    ko.write_bytes(fixed)
    out = subprocess.run(["readelf", "-rW", str(ko)], capture_output=True, text=True, check=True).stdout
    assert "R_X86_64_PLT32" not in out and sum(e.count for e in edits) > 0
    vm.upload(ko, "/tmp/rewritten.ko")
    try:
        r = vm.run("insmod /tmp/rewritten.ko && cat /sys/kernel/debug/kprobes/list && sh -c true", 60)
        assert r.status == 0, r.output
        assert "kernel_clone" in r.stdout
    finally:
        vm.run("rmmod vmprobe_fork", 60)
    assert vm.run("cat /sys/kernel/debug/kprobes/list").stdout.strip() == ""

"""``vmprobe gdb``: gdb attached to a real guest's gdbstub, with kallsyms and module symbols."""
from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import pytest
from terminal import terminal  # tests/vm/terminal.py

from vmprobe.formats.elf import read_module, section
from vmprobe.formats.kprobes_list import parse_debugfs_list
from vmprobe.runs import debugger


def _gdb_processes(needle: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if needle in cmdline:
            found.append(int(pid))
    return found


@pytest.mark.arch("amd64", "i386")  # x86: the fork probe at +0 rides ftrace's call
def test_batch_gdb_has_kernel_and_module_symbols(vm, fork_module, tmp_path):
    kallsyms = vm.run("grep -E ' [tT] kernel_clone$' /proc/kallsyms").stdout.split()
    clone = int(kallsyms[0], 16)
    debugger.load_module(vm, fork_module, "nonce=gdbtest")
    try:
        probes = [p for p in parse_debugfs_list(vm.run("cat /sys/kernel/debug/kprobes/list").stdout)
                  if p.symbol == "kernel_clone"]
        assert probes, "the fork probe is not armed"
        probe = probes[0].address
        session = debugger.prepare(vm, fork_module)
        text = session.module_text
        text_size = len(section(read_module(fork_module.path), ".text"))
        out = tmp_path / "gdb.out"
        with out.open("w") as f:
            status = debugger.run_gdb(session, batch=True, stdout=f, commands=[
                f"info symbol {clone:#x}", "info address handler_pre", f"x/i {probe:#x}"])
        output = out.read_text()
        assert status == 0, output
        assert re.search(r"^kernel_clone in section \.kallsyms", output, re.M), output
        m = re.search(r'Symbol "handler_pre" is (?:a function )?at (?:address )?(0x[0-9a-f]+)', output)
        assert m, output
        assert text <= int(m[1], 16) < text + text_size, (hex(text), text_size, output)
        # the armed probe: ftrace's call at kernel_clone+0 (+4 past ENDBR on IBT kernels),
        # named by the kallsyms symbols
        moved = probe - clone
        assert moved in (0, 4), hex(moved)
        m = re.search(rf"^\s*{probe:#x} <kernel_clone(\+{moved})?>:\s+(\w+)", output, re.M)
        assert m and m[2] == "call", output
        # gdb is gone and the guest runs on
        assert not _gdb_processes(str(session.script))
        assert vm.qmp.cmd("query-status")["status"] == "running"
        assert vm.run("echo alive").stdout.strip() == "alive"
    finally:
        vm.run(f"rmmod {fork_module.name}")
    assert vm.run("cat /sys/kernel/debug/kprobes/list").stdout.strip() == ""


def test_gdb_cli_batch(vmprobe_cli, accel, no_leaks):
    res = vmprobe_cli("gdb", "--kernel", "debian:bookworm", "--accel", accel, "--module", "--batch",
                      "-ex", "info symbol kernel_clone", "-ex", "info address handler_post",
                      "-ex", "p/x $pc")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "kernel_clone in section .kallsyms" in res.stdout, res.stdout
    assert re.search(r'Symbol "handler_post" is a function at address 0xffffffffc', res.stdout), res.stdout
    assert re.search(r"^\$1 = 0xffffffff[0-9a-f]{8}$", res.stdout, re.M), res.stdout  # stopped in the kernel
    assert "kernel symbols from /proc/kallsyms" in res.stderr
    assert "[Inferior 1 (process 1) detached]" in res.stdout


@pytest.mark.slow
def test_vmlinux_dbg_symbols_with_kaslr_offset(vm, kernel, tmp_path):
    """The -dbg package's vmlinux (≈270 MB download, cached) at the KASLR offset: DWARF types."""
    vmlinux = debugger.fetch_vmlinux_dbg(kernel)
    clone = int(vm.run("grep -E ' [tT] kernel_clone$' /proc/kallsyms").stdout.split()[0], 16)
    session = debugger.prepare(vm, None, vmlinux)
    assert session.kaslr_offset is not None
    out = tmp_path / "gdb.out"
    with out.open("w") as f:
        status = debugger.run_gdb(session, batch=True, stdout=f, commands=[
            "info address kernel_clone", "ptype struct kprobe"])
    output = out.read_text()
    assert status == 0, output
    m = re.search(r'Symbol "kernel_clone" is a function at address (0x[0-9a-f]+)', output)
    assert m and int(m[1], 16) == clone, (hex(clone), output)
    assert "kprobe_opcode_t *addr;" in output, output
    assert vm.qmp.cmd("query-status")["status"] == "running"


def test_interactive_gdb_on_a_terminal(accel, no_leaks):
    """A user's session: commands, continue, Ctrl-C stops the guest (not vmprobe), quit ends all."""
    with terminal([sys.executable, "-m", "vmprobe", "gdb", "--kernel", "debian:bookworm",
                   "--accel", accel]) as t:
        t.expect(r"\(gdb\) ", 600)
        t.send(b"info symbol kernel_clone\n")
        t.expect(r"kernel_clone in section \.kallsyms", 60)
        t.send(b"continue\n")
        t.expect(r"Continuing\.", 60)
        time.sleep(1)
        t.send(b"\x03")                                # Ctrl-C: the terminal sends SIGINT to its group
        t.expect(r"received signal SIGINT(?s:.*)\(gdb\)", 60)
        assert t.proc.poll() is None, t.text           # vmprobe ignored it; gdb stopped the guest
        t.send(b"quit\n")
        t.expect(r"Quit anyway\? \(y or n\) ", 30)
        t.send(b"y\n")
        assert t.proc.wait(60) == 0, t.text

"""Kernel symbols for gdb from /proc/kallsyms text: parsed, assembled, read back by nm and gdb."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from vmprobe.arch import PROFILES
from vmprobe.runs.debugger import SECTION, kallsyms_assembly, kallsyms_object, kernel_span, parse_kallsyms

KALLSYMS = """\
0000000000000000 A fixed_percpu_data
0000000000001000 A cpu_number
ffffffff81000000 T _text
ffffffff81000000 T startup_64
ffffffff81001000 t do_one_initcall.cold
ffffffff810941a0 T kernel_clone
ffffffff810942f0 t show_state
ffffffff81094400 t show_state
ffffffff82000000 D init_task
ffffffff82400000 B _end
ffffffffc0400000 t vmprobe_thing\t[vmprobe_fork]
"""


def test_parse_skips_module_symbols_and_span_is_the_image():
    syms = parse_kallsyms(KALLSYMS)
    assert "vmprobe_thing" not in {s.name for s in syms}
    assert kernel_span(syms) == (0xffffffff81000000, 0xffffffff82400000)


def test_assembly_sizes_types_and_duplicates():
    asm, base = kallsyms_assembly(parse_kallsyms(KALLSYMS))
    assert base == 0xffffffff81000000
    assert "fixed_percpu_data" not in asm                      # per-CPU offsets are not addresses
    assert '.size "kernel_clone", 0x150' in asm                # up to the next symbol
    assert '.size "_text", 0x1000' in asm and '.size "startup_64", 0x1000' in asm  # aliases
    assert '.type "init_task", %object' in asm and '.type "kernel_clone", %function' in asm
    assert '"show_state":' in asm and '"show_state.dup2":' in asm
    assert asm.rstrip().endswith(".org 0x1400000")


@pytest.mark.skipif(not shutil.which("as") or not shutil.which("nm"), reason="needs binutils")
def test_object_reads_back_at_runtime_addresses(tmp_path):
    obj = tmp_path / "k.o"
    base = kallsyms_object(parse_kallsyms(KALLSYMS), PROFILES["amd64"], obj)
    nm = subprocess.run(["nm", str(obj)], capture_output=True, text=True, check=True).stdout
    assert "00000000000941a0 T kernel_clone" in nm                 # section-relative
    assert "0000000000094400 t show_state.dup2" in nm
    if shutil.which("gdb"):
        out = subprocess.run(["gdb", "--nx", "--batch", "-ex", "set architecture i386:x86-64",
                              "-ex", f"add-symbol-file {obj} -s {SECTION} {base:#x}",
                              "-ex", "info symbol 0xffffffff810941a4", "-ex", "info address init_task"],
                             capture_output=True, text=True, timeout=60).stdout
        assert "kernel_clone + 4 in section .kallsyms" in out, out
        assert "0xffffffff82000000" in out, out

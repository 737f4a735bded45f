"""Where a function's body starts, read from its bytes in the running guest (not assumed).

x86_64 kernels differ (the fentry site is +0..+5 without IBT, +4..+9 after an ENDBR, and a
function the compiler left untraced has none); arm64 has its patch site and maybe a BTI.
The arch's site decoder (vmprobe/arch/sites.py) reads it.
"""
from __future__ import annotations

from vmprobe.check.probe import resolve_symbols
from vmprobe.vm.gdb import Gdb


def after_entry(vm, symbol: str) -> tuple[int, int]:
    """(address of ``symbol``, offset of its first instruction past the entry sequence)."""
    base = resolve_symbols(vm, [symbol])[symbol]
    g = Gdb(vm.profile.gdb_binary, arch=vm.profile.gdb_arch)
    try:
        g.attach(vm.gdb_socket)
        start = g.read_memory(base, 16)
        g.cont()
    finally:
        g.close()
    return base, vm.profile.sites.entry_offset(start)

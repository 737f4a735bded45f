"""fprobes without a guest: the enabled_functions lines that are fprobes, and the struct fprobe's
handlers found in a module's data."""
from __future__ import annotations

import struct

from vmprobe.check.discovery import find_handlers
from vmprobe.check.fprobes import find_handlers as find_fprobe_handlers
from vmprobe.check.fprobes import parse_enabled_functions
from vmprobe.formats.kprobes_list import ProbeRecord
from vmprobe.modules.introspect import Function, ModuleImage

# trixie 6.12, fprobe_example loaded, a kprobe on an ftrace site and a plain function tracer filter
ENABLED = """\
kernel_clone (1) R         \ttramp: 0xffffffffc0407000 (fprobe_handler+0x0/0x240) ->fprobe_handler+0x0/0x240
do_sys_openat2 (1) R I     \ttramp: 0xffffffffc0409000 (kprobe_ftrace_handler+0x0/0x1a0) ->kprobe_ftrace_handler+0x0/0x1a0
vfs_read (1)    \t->fprobe_kprobe_handler+0x0/0x60
ksys_write (1)    \t->function_trace_call+0x0/0x1f0
"""


def test_only_fprobe_callbacks_are_fprobes():
    found = parse_enabled_functions(ENABLED)
    assert [(x.function, x.callback, x.flags) for x in found] == [
        ("kernel_clone", "fprobe_handler", "R"), ("vfs_read", "fprobe_kprobe_handler", "")]


def test_struct_fprobe_is_found_by_its_callback_and_named_at_the_btf_offsets():
    text, data = 0xffffffffc03fc000, 0xffffffffc0400000
    image = ModuleImage("m", [Function("on_entry", ".text", 0x100, 0x40), Function("on_exit", ".text", 0x200, 0x40)])
    callback = 0xffffffff9a2b3c40
    blob = bytearray(0x400)
    at = 0x200                                   # the struct fprobe: ops.func first
    struct.pack_into("<Q", blob, at, callback)
    struct.pack_into("<Q", blob, at + 0xe8, text + 0x100)
    struct.pack_into("<Q", blob, at + 0xf0, text + 0x200)
    offsets = {"entry_handler": 0xe8, "exit_handler": 0xf0}
    h = find_fprobe_handlers(callback, offsets, image, {".text": text}, {data: bytes(blob)}, 8)
    assert (h.struct_address, h.entry, h.ret) == (data + at, "on_entry", "on_exit")
    assert h.addresses == {"on_entry": text + 0x100, "on_exit": text + 0x200}
    assert find_fprobe_handlers(callback, None, image, {".text": text}, {data: bytes(blob)}, 8).struct_address is None


def test_kprobe_handlers_carry_their_addresses():
    text, data = 0xffffffffc03fc000, 0xffffffffc0400000
    image = ModuleImage("m", [Function("pre", ".text", 0x10, 0x20)])
    probe = 0xffffffff8ca941a4
    blob = bytearray(0x100)
    struct.pack_into("<QQQ", blob, 0x28, probe, 0, 0)      # addr after 2 hlist + 2 list + nmissed words
    struct.pack_into("<Q", blob, 0x28 + 3 * 8, text + 0x10)
    h = find_handlers(ProbeRecord(probe, "kernel_clone", 4), image, {".text": text}, {data: bytes(blob)}, 8)
    assert h.pre == "pre" and h.addresses == {"pre": text + 0x10}

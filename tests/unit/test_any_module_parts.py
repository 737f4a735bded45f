"""The pieces of the any-module check that need no guest: discovery, handlers, registrations, refusals."""
from __future__ import annotations

import struct

from vmprobe.check.any_module import module_lines
from vmprobe.check.discovery import (discover, find_handlers, in_registration_order, kind_of, registered_offset,
                                     section_bases)
from vmprobe.check.refusals import Registration, explain, parse_registrations
from vmprobe.formats.kprobes_list import parse_debugfs_list
from vmprobe.modules.introspect import Function, ModuleImage

BEFORE = "ffffffff8ca941a0  k  register_kprobe+0x0    [FTRACE]\n"
AFTER = BEFORE + ("ffffffff8ca941a0  r  kernel_clone+0x0    [FTRACE]\n"
                  "ffffffff8cf4a355  k  do_sys_openat2+0x5    \n")


def test_discovery_is_the_difference_and_keeps_the_type():
    new = discover(parse_debugfs_list(BEFORE), parse_debugfs_list(AFTER))
    assert [(r.symbol, r.offset, r.type, kind_of(r)) for r in new] == [
        ("kernel_clone", 0, "r", "kretprobe"), ("do_sys_openat2", 5, "k", "kprobe")]
    regs = [Registration("kprobe", "do_sys_openat2", 5, 0, 0), Registration("kretprobe", "kernel_clone", 0, 0, 0)]
    assert [r.symbol for r in in_registration_order(new, regs)] == ["do_sys_openat2", "kernel_clone"]



def test_two_probes_on_one_function_each_find_their_own_registration():
    """kernel_clone+0 (moved to +4 past an IBT ENDBR) and kernel_clone+9, listed in hash order."""
    listed = parse_debugfs_list("ffffffff8ca94129  k  kernel_clone+0x9    \n"
                                "ffffffff8ca94124  k  kernel_clone+0x4    [FTRACE]\n")
    regs = [Registration("kprobe", "kernel_clone", 0, 0, 0), Registration("kprobe", "kernel_clone", 9, 0, 0)]
    ordered = in_registration_order(listed, regs)
    assert [r.offset for r in ordered] == [4, 9]
    assert [registered_offset(r, regs) for r in ordered] == [0, 9]
    assert registered_offset(ordered[0], []) is None


TRACE = """\
 insmod-80 [000] ..... 9.1: krp: (register_kretprobe+0x0/0x2a0) addr=0x0 sym="kernel_clone" off=0
 insmod-80 [000] ..... 9.2: kp: (register_kprobe+0x0/0x180) addr=0x0 sym="kernel_clone" off=0
 insmod-80 [000] ..... 9.3: kpret: (register_kretprobe+0x8f/0x2a0 <- register_kprobe) ret=0
 insmod-80 [000] ..... 9.4: krpret: (do_one_initcall+0x41/0x200 <- register_kretprobe) ret=0
 insmod-80 [000] ..... 9.5: kp: (register_kprobe+0x0/0x180) addr=0x0 sym="vfsread" off=0
 insmod-80 [000] ..... 9.6: kpret: (typo_init+0x1a/0x40 [typo] <- register_kprobe) ret=-2
"""


def test_registrations_fold_a_kretprobes_inner_kprobe():
    regs = parse_registrations(TRACE)
    assert [(r.kind, r.symbol, r.offset, r.ret) for r in regs] == [
        ("kretprobe", "kernel_clone", 0, 0), ("kprobe", "vfsread", 0, -2)]


def test_refusals_name_what_the_module_asked_for():
    regs = parse_registrations(TRACE)
    msg = explain("typo", "6.1.0-1-amd64", 2, regs, [], lambda s: None)
    assert msg == ("typo asked for vfsread+0: symbol vfsread not found in kernel 6.1.0-1-amd64 "
                   "(register_kprobe returned -ENOENT)")
    black = [Registration("kprobe", "kprobe_int3_handler", 0, 0, -22)]
    assert "is on the kprobe blacklist" in explain("m", "r", 22, black, [], lambda s: f"{s} is on the kprobe blacklist")
    assert explain("m", "r", 22, [], ["m: giving up"], lambda s: None) == (
        "m's init failed with -EINVAL (Invalid argument); its last kernel lines: m: giving up")
    assert "a kretprobe must be on a function's entry" in explain(
        "m", "r", 22, [Registration("kretprobe", "f", 5, 0, -22)], [], lambda s: None)


def test_handlers_are_read_from_the_struct_next_to_the_address():
    image = ModuleImage("m", [Function("pre", ".text", 0x10, 0x20), Function("post", ".text", 0x40, 0x20),
                              Function("ret", ".text", 0x80, 0x20), Function("entry", ".text", 0xc0, 0x20)])
    bases = section_bases(".text 0xffffffffc0001000\n.data 0xffffffffc0003000\n")
    text = 0xffffffffc0001000
    probe = 0xffffffff8ca941a5
    kp = struct.pack("<9Q", 0, 0, 0, 0, 0, probe, 0, 5, text + 0x10) + struct.pack("<Q", text + 0x40)
    record = parse_debugfs_list(f"{probe:x}  k  kernel_clone+0x5\n")[0]
    h = find_handlers(record, image, bases, {0xffffffffc0003000: b"\0" * 16 + kp}, 8)
    assert (h.pre, h.post, h.struct_address) == ("pre", "post", 0xffffffffc0003010)
    # a kretprobe: kp (with the kernel's own pre handler), then handler, entry_handler, maxactive, nmissed, data_size
    kernel_pre = 0xffffffff8c000000
    krp = (struct.pack("<9Q", 0, 0, 0, 0, 0, probe, 0, 0, kernel_pre) + b"\0" * 64
           + struct.pack("<QQiiQ", text + 0x80, text + 0xc0, 20, 0, 8))
    record = parse_debugfs_list(f"{probe:x}  r  kernel_clone+0x0\n")[0]
    h = find_handlers(record, image, bases, {0xffffffffc0003000: krp}, 8)
    assert (h.ret, h.entry, h.maxactive, h.data_size, h.pre) == ("ret", "entry", 20, 8, None)


def test_module_lines_drop_timestamps_and_vmprobe_noise():
    text = ("[   9.1] param_target: loading out-of-tree module taints kernel.\n"
            "[   9.2] Planted kprobe at ffffffff8ca941a0\n[   9.3] vmprobe-marker abc\n")
    assert module_lines(text) == ["Planted kprobe at ffffffff8ca941a0"]

"""vmprobe.arch.sites: decoding the bytes at a probe site, through each arch's profile."""
from __future__ import annotations

import struct

import pytest

from vmprobe.arch import PROFILES, SITE_WINDOW, Mechanism, Site, SiteDecoder, agrees_with_flags, profile_by_name

NOP5 = bytes.fromhex("0f1f440000")
# push rbp; mov rbp,rsp; push r15; push r14 ... : an ordinary function entry
PROLOGUE = bytes.fromhex("554889e54157415641554154")


def classify(arch: str, address: int, baseline: bytes, armed: bytes) -> Site:
    return profile_by_name(arch).sites.classify(address, baseline, armed)


def entry_offset(arch: str, function_start: bytes) -> int:
    return profile_by_name(arch).sites.entry_offset(function_start)


def _rel(op: int, rel: int, tail: bytes = b"") -> bytes:
    return bytes([op]) + struct.pack("<i", rel) + tail


def test_unchanged_bytes_are_unarmed():
    assert classify("x86_64", 0xffffffff81000000, PROLOGUE, PROLOGUE) == Site("unarmed")
    assert classify("aarch64", 0xffff800008000000, b"\x1f\x20\x03\xd5", b"\x1f\x20\x03\xd5").mechanism == "unarmed"


@pytest.mark.parametrize("arch", ["x86_64", "i386"])
def test_int3(arch):
    armed = b"\xcc" + PROLOGUE[1:]
    site = classify(arch, 0xc011ea60, PROLOGUE, armed)
    assert site == Site("int3", None)
    assert site.to_dict() == {"mechanism": "int3", "target": None}


def test_optimized_jump_forward():
    addr = 0xffffffff8ca941a0
    site = classify("x86_64", addr, PROLOGUE, _rel(0xE9, 0x1000, PROLOGUE[5:]))
    assert site.mechanism == "optimized"
    assert site.target == addr + 5 + 0x1000
    assert site.to_dict() == {"mechanism": "optimized", "target": hex(addr + 5 + 0x1000)}


def test_optimized_jump_backward_negative_rel32():
    # optprobe detour buffers usually sit below the probed function
    addr = 0xffffffff8ca941a0
    site = classify("x86_64", addr, PROLOGUE, _rel(0xE9, -0x2000000, PROLOGUE[5:]))
    assert site.mechanism == "optimized"
    assert site.target == 0xffffffff8aa941a5


def test_optimized_target_wraps_at_64_bits():
    addr = 0xfffffffffffffff0
    site = classify("x86_64", addr, PROLOGUE, _rel(0xE9, 0x20))
    assert site.target == (addr + 5 + 0x20) - (1 << 64) == 0x15


def test_i386_target_wraps_at_32_bits():
    addr = 0xfffffff0
    site = classify("i386", addr, PROLOGUE, _rel(0xE9, 0x20))
    assert site.target == 0x15
    site = classify("i386", 0xc011ea60, PROLOGUE, _rel(0xE9, -0x100))
    assert site.target == 0xc011ea60 + 5 - 0x100


def test_ftrace_call_over_fentry_nop():
    addr = 0xffffffff8ca941a0
    armed = _rel(0xE8, -0x1234, PROLOGUE)
    site = classify("x86_64", addr, NOP5 + PROLOGUE, armed)
    assert site.mechanism == "ftrace"
    assert site.target == addr + 5 - 0x1234


def test_ftrace_call_replacing_another_call():
    addr = 0xffffffff8ca941a0
    site = classify("x86_64", addr, _rel(0xE8, 0x10, PROLOGUE), _rel(0xE8, 0x99, PROLOGUE))
    assert site == Site("ftrace", addr + 5 + 0x99)


@pytest.mark.parametrize("baseline, armed", [
    (PROLOGUE, _rel(0xE8, 0x10, PROLOGUE[5:])),   # a call where no fentry NOP was
    (PROLOGUE, b"\x90" + PROLOGUE[1:]),             # some other change
    (PROLOGUE, b"\xe9\x00\x00"),                    # truncated jump
])
def test_unknown_x86_changes(baseline, armed):
    assert classify("x86_64", 0xffffffff81000000, baseline, armed) == Site("unknown")


def test_arm64_brk():
    base = bytes.fromhex("fd7bbfa9fd030091")  # stp x29, x30, [sp, #-16]!; mov x29, sp
    armed = bytes.fromhex("800020d4") + base[4:]
    assert classify("aarch64", 0xffff800008123456, base, armed) == Site("brk")
    # a different brk immediate is not the kprobes one
    assert classify("aarch64", 0xffff800008123456, base, bytes.fromhex("000020d4") + base[4:]).mechanism == "unknown"


def test_unsupported_arch_is_unknown():
    # an arch without a decoder of its own (the base decoder) knows only "unchanged"
    assert profile_by_name("riscv64") is None
    assert SiteDecoder().classify(0x1000, b"\x00" * 4, b"\x02\x90\x00\x00").mechanism == "unknown"
    assert SiteDecoder().entry_offset(b"\x02\x90\x00\x00") == 0


def test_every_profile_decodes_its_own_breakpoint():
    for p in PROFILES.values():
        armed = {Mechanism.INT3: b"\xcc", Mechanism.BRK: bytes.fromhex("800020d4")}[p.breakpoint_mechanism]
        assert p.sites.classify(0x1000, PROLOGUE, armed + PROLOGUE[len(armed):]).mechanism == p.breakpoint_mechanism


def test_site_window_covers_a_jump():
    assert SITE_WINDOW >= 5


@pytest.mark.parametrize("mechanism, flags, agrees", [
    ("int3", [], True),
    ("brk", [], True),
    ("optimized", ["OPTIMIZED"], True),
    ("ftrace", ["FTRACE"], True),
    ("int3", ["OPTIMIZED"], False),
    ("int3", ["FTRACE"], False),
    ("optimized", [], False),
    ("optimized", ["FTRACE"], False),
    ("ftrace", [], False),
    ("ftrace", ["FTRACE", "OPTIMIZED"], False),
    ("unarmed", [], False),
    ("unknown", [], False),
    ("unknown", ["OPTIMIZED"], False),
    ("unarmed", ["DISABLED"], True),
    ("unarmed", ["GONE"], True),
    ("unarmed", ["DISABLED", "FTRACE"], True),
    ("int3", ["DISABLED"], False),
    ("ftrace", ["DISABLED", "FTRACE"], False),
    ("optimized", ["GONE", "OPTIMIZED"], False),
])
def test_agrees_with_flags(mechanism, flags, agrees):
    assert agrees_with_flags(mechanism, flags) is agrees


# -- entry offsets (--offset after-entry) ---------------------------------------------------

@pytest.mark.parametrize("start, expected", [
    ("0f1f440000" "4157", 5),                 # 6.1: fentry NOP, no IBT
    ("6666666690" "4157", 5),                 # 5.10: K8 NOP at the fentry site
    ("e8aabbccdd" "4157", 5),                 # fentry call armed (ftrace on)
    ("f30f1efa" "0f1f440000" "41", 9),        # IBT: ENDBR64 then fentry
    ("660f1f00" "0f1f440000" "41", 9),        # IBT: sealed ENDBR (poison) then fentry
    ("0f1f40d6" "e8aabbccdd" "41", 9),        # the other poison, fentry armed
    ("4157415641554154", 0),                  # notrace function: no entry sequence
])
def test_entry_offset_x86(start, expected):
    assert entry_offset("x86_64", bytes.fromhex(start)) == expected


@pytest.mark.parametrize("start, offset", [
    # bookworm arm64 kernel_clone as read from a guest: mov x9, x30; nop (ftrace site); paciasp
    ("e9031eaa" "1f2003d5" "3f2303d5" "fd7bbaa9", 8),
    ("1f2003d5" "1f2003d5" "3f2303d5", 8),                  # before ftrace init: two NOPs
    ("e9031eaa" "00000094" "3f2303d5", 8),                  # ftrace enabled: bl ftrace_caller
    ("5f2403d5" "e9031eaa" "1f2003d5" "3f2303d5", 12),      # BTI c first
    ("3f2303d5" "fd7bbaa9" "fd030091", 0),                  # no patch site (notrace)
    ("1f2003d5" "fd7bbaa9", 0),                             # one NOP is not a patch site
])
def test_entry_offset_arm64(start, offset):
    assert entry_offset("aarch64", bytes.fromhex(start)) == offset


def test_ftrace_over_k8_nop():
    site = classify("x86_64", 0xffffffff81000000, bytes.fromhex("6666666690") + b"\x41" * 4,
                    bytes.fromhex("e800100000") + b"\x41" * 4)
    assert site.mechanism == "ftrace" and site.target == 0xffffffff81001005

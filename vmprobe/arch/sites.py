"""What the bytes at a probe site say about how the probe is armed: one decoder per arch.

x86 (64 and 32 bit): ``cc`` int3 (a plain kprobe); ``e9 rel32`` a jump into
the optprobe detour (``[OPTIMIZED]``); ``e8 rel32`` where the unarmed site is
the 5-byte fentry NOP: the ftrace call (``[FTRACE]``). arm64: the word
``d4200080`` (``brk #4``, bytes ``80 00 20 d4``). Unchanged bytes mean disarmed.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import StrEnum


class Mechanism(StrEnum):
    """How an armed probe shows in the bytes at its site (a str: JSON and CLI use the value)."""
    INT3 = "int3"            # x86 breakpoint (a plain kprobe)
    OPTIMIZED = "optimized"  # x86 jump into an optprobe detour
    FTRACE = "ftrace"        # the fentry site's call, through ftrace
    BRK = "brk"              # arm64 breakpoint word (brk #4)
    UNARMED = "unarmed"      # the bytes did not change
    UNKNOWN = "unknown"      # changed into something no decoder knows

    @property
    def armed(self) -> bool:
        """A way of arming some decoder recognised (what ``--expect-mechanism`` can ask for)."""
        return self not in (Mechanism.UNARMED, Mechanism.UNKNOWN)


#: mechanism → the list flag that must accompany it ('' = none of OPTIMIZED/FTRACE)
EXPECTED_FLAG = {Mechanism.INT3: "", Mechanism.BRK: "", Mechanism.OPTIMIZED: "OPTIMIZED",
                 Mechanism.FTRACE: "FTRACE"}

#: How many bytes to compare: an optimized jump replaces up to this many bytes
#: of whole instructions (RELATIVEJUMP_SIZE plus the tail of the last one).
SITE_WINDOW = 32


@dataclass(frozen=True)
class Site:
    mechanism: Mechanism
    target: int | None = None  # where a jmp/call at the site goes

    def to_dict(self) -> dict:
        return {"mechanism": self.mechanism,
                "target": f"{self.target:#x}" if self.target is not None else None}


def agrees_with_flags(mechanism: Mechanism, flags: list[str]) -> bool:
    """Do the bytes tell the same story as the kprobes list flags?"""
    if "DISABLED" in flags or "GONE" in flags:
        return mechanism == Mechanism.UNARMED
    if mechanism not in EXPECTED_FLAG:
        return False
    want = EXPECTED_FLAG[mechanism]
    kinds = {f for f in flags if f in ("OPTIMIZED", "FTRACE")}
    return kinds == ({want} if want else set())


class SiteDecoder:
    """Bytes → mechanism for one arch. The base knows only "unchanged": a new arch starts here."""

    def classify(self, address: int, baseline: bytes, armed: bytes) -> Site:
        """Decode the armed bytes at ``address`` against the unarmed baseline."""
        if armed == baseline:
            return Site(Mechanism.UNARMED)
        return self.decode(address, baseline, armed)

    def decode(self, address: int, baseline: bytes, armed: bytes) -> Site:
        return Site(Mechanism.UNKNOWN)

    def entry_offset(self, function_start: bytes) -> int:
        """Offset of a function's first instruction after its entry sequence (read from the
        bytes, not from the kernel version: kernels differ in what they put there)."""
        return 0

    def unarmed_guess(self, size: int) -> bytes:
        """What an unarmed site most likely held when it could not be read before arming
        (only the fentry site's NOP decides anything on x86; elsewhere nothing is assumed)."""
        return bytes(size)


X86_NOP5 = bytes.fromhex("0f1f440000")
#: 5-byte NOPs an unarmed fentry site can hold: P6 (6.x), K8 (5.10's ideal_nops), i386 lea
X86_NOP5S = (X86_NOP5, bytes.fromhex("6666666690"), bytes.fromhex("3e8d742600"))
#: IBT: ENDBR64, ENDBR32, and the two poisons the kernel seals unused ENDBRs with.
X86_ENDBR = (bytes.fromhex("f30f1efa"), bytes.fromhex("f30f1efb"),
             bytes.fromhex("660f1f00"), bytes.fromhex("0f1f40d6"))


@dataclass(frozen=True)
class X86Sites(SiteDecoder):
    """x86_64 and i386 alike; only the width a jump target wraps at differs."""
    bits: int

    def decode(self, address: int, baseline: bytes, armed: bytes) -> Site:
        op = armed[0]
        if op == 0xCC:
            return Site(Mechanism.INT3)
        if op in (0xE8, 0xE9) and len(armed) >= 5:
            rel, = struct.unpack_from("<i", armed, 1)
            target = (address + 5 + rel) & ((1 << self.bits) - 1)
            if op == 0xE9:
                return Site(Mechanism.OPTIMIZED, target)
            if baseline[:5] in X86_NOP5S or baseline[0] == 0xE8:
                return Site(Mechanism.FTRACE, target)
        return Site(Mechanism.UNKNOWN)

    def entry_offset(self, function_start: bytes) -> int:
        """An ENDBR (IBT kernels, 6.12+: 4 bytes, possibly sealed into a NOP), then the
        5-byte fentry site (``call __fentry__`` or its NOP) → +5 without IBT, +9 with it."""
        offset = 4 if function_start[:4] in X86_ENDBR else 0
        site = function_start[offset:offset + 5]
        if site in X86_NOP5S or site[:1] == b"\xe8":
            offset += 5
        return offset

    def unarmed_guess(self, size: int) -> bytes:
        return X86_NOP5.ljust(size, b"\0")


ARM64_BRK = bytes.fromhex("800020d4")
ARM64_NOP = 0xD503201F
ARM64_MOV_X9_X30 = 0xAA1E03E9   # the first slot of the ftrace patch site, once ftrace init ran
#: BTI c/j/jc and PACIASP/PACIBSP hints that can open a function (before the patch site)
ARM64_LANDING = {0xD503241F, 0xD503245F, 0xD503249F, 0xD50324DF}


@dataclass(frozen=True)
class Arm64Sites(SiteDecoder):
    """arm64 has one way of arming a kprobe: the ``brk #4`` word."""

    def decode(self, address: int, baseline: bytes, armed: bytes) -> Site:
        return Site(Mechanism.BRK) if armed[:4] == ARM64_BRK else Site(Mechanism.UNKNOWN)

    def entry_offset(self, function_start: bytes) -> int:
        """(DYNAMIC_FTRACE_WITH_REGS) an optional BTI landing pad, then the two-instruction
        patch site (``mov x9, x30`` or a NOP, then ``bl ftrace_caller`` or a NOP) → +8,
        +12 after a BTI."""
        words = [struct.unpack_from("<I", function_start, i)[0]
                 for i in range(0, len(function_start) - 3, 4)]
        offset = 4 if words and words[0] in ARM64_LANDING else 0
        first, second = (words[offset // 4:offset // 4 + 2] + [None, None])[:2]
        is_bl = second is not None and (second & 0xFC000000) == 0x94000000
        if first in (ARM64_NOP, ARM64_MOV_X9_X30) and (second == ARM64_NOP or is_bl):
            offset += 8
        return offset

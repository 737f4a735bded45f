"""What the bytes at a probe site say about how the probe is armed, per architecture.

x86 (64 and 32 bit): ``cc`` int3 (a plain kprobe); ``e9 rel32`` a jump into
the optprobe detour (``[OPTIMIZED]``); ``e8 rel32`` where the unarmed site is
the 5-byte fentry NOP: the ftrace call (``[FTRACE]``). arm64: the word
``d4200080`` (``brk #4``, bytes ``80 00 20 d4``). Unchanged bytes mean disarmed.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

X86_NOP5 = bytes.fromhex("0f1f440000")
#: 5-byte NOPs an unarmed fentry site can hold: P6 (6.x), K8 (5.10's ideal_nops), i386 lea
X86_NOP5S = (X86_NOP5, bytes.fromhex("6666666690"), bytes.fromhex("3e8d742600"))
#: IBT: ENDBR64, ENDBR32, and the two poisons the kernel seals unused ENDBRs with.
X86_ENDBR = (bytes.fromhex("f30f1efa"), bytes.fromhex("f30f1efb"),
             bytes.fromhex("660f1f00"), bytes.fromhex("0f1f40d6"))
ARM64_BRK = bytes.fromhex("800020d4")
ARM64_NOP = 0xD503201F
ARM64_MOV_X9_X30 = 0xAA1E03E9   # the first slot of the ftrace patch site, once ftrace init ran
#: BTI c/j/jc and PACIASP/PACIBSP hints that can open a function (before the patch site)
ARM64_LANDING = {0xD503241F, 0xD503245F, 0xD503249F, 0xD50324DF}

#: mechanism → the list flag that must accompany it ('' = none of OPTIMIZED/FTRACE)
EXPECTED_FLAG = {"int3": "", "brk": "", "optimized": "OPTIMIZED", "ftrace": "FTRACE"}

#: How many bytes to compare: an optimized jump replaces up to this many bytes
#: of whole instructions (RELATIVEJUMP_SIZE plus the tail of the last one).
SITE_WINDOW = 32


@dataclass(frozen=True)
class Site:
    mechanism: str           # int3 | optimized | ftrace | brk | unarmed | unknown
    target: int | None = None  # where a jmp/call at the site goes

    def to_dict(self) -> dict:
        return {"mechanism": self.mechanism,
                "target": f"{self.target:#x}" if self.target is not None else None}


def classify(arch: str, address: int, baseline: bytes, armed: bytes) -> Site:
    """Decode the armed bytes at ``address`` against the unarmed baseline."""
    if armed == baseline:
        return Site("unarmed")
    if arch in ("x86_64", "i386"):
        op = armed[0]
        if op == 0xCC:
            return Site("int3")
        if op in (0xE8, 0xE9) and len(armed) >= 5:
            rel, = struct.unpack_from("<i", armed, 1)
            mask = (1 << (64 if arch == "x86_64" else 32)) - 1
            target = (address + 5 + rel) & mask
            if op == 0xE9:
                return Site("optimized", target)
            if baseline[:5] in X86_NOP5S or baseline[0] == 0xE8:
                return Site("ftrace", target)
        return Site("unknown")
    if arch == "aarch64":
        return Site("brk") if armed[:4] == ARM64_BRK else Site("unknown")
    return Site("unknown")


def agrees_with_flags(mechanism: str, flags: list[str]) -> bool:
    """Do the bytes tell the same story as the kprobes list flags?"""
    if "DISABLED" in flags or "GONE" in flags:
        return mechanism == "unarmed"
    if mechanism not in EXPECTED_FLAG:
        return False
    want = EXPECTED_FLAG[mechanism]
    kinds = {f for f in flags if f in ("OPTIMIZED", "FTRACE")}
    return kinds == ({want} if want else set())


def entry_offset(arch: str, function_start: bytes) -> int:
    """Offset of a function's first instruction after its entry sequence.

    x86: an ENDBR (IBT kernels, 6.12+: 4 bytes, possibly sealed into a NOP),
    then the 5-byte fentry site (``call __fentry__`` or its NOP) → +5 without
    IBT, +9 with it. arm64 (DYNAMIC_FTRACE_WITH_REGS): an optional BTI landing
    pad, then the two-instruction patch site (``mov x9, x30`` or a NOP, then
    ``bl ftrace_caller`` or a NOP) → +8, +12 after a BTI. Decided from the
    bytes, not from the kernel version.
    """
    if arch == "aarch64":
        return _arm64_entry_offset(function_start)
    if arch not in ("x86_64", "i386"):
        return 0
    offset = 4 if function_start[:4] in X86_ENDBR else 0
    site = function_start[offset:offset + 5]
    if site in X86_NOP5S or site[:1] == b"\xe8":
        offset += 5
    return offset


def _arm64_entry_offset(function_start: bytes) -> int:
    words = [struct.unpack_from("<I", function_start, i)[0] for i in range(0, len(function_start) - 3, 4)]
    offset = 4 if words and words[0] in ARM64_LANDING else 0
    first, second = (words[offset // 4:offset // 4 + 2] + [None, None])[:2]
    is_bl = second is not None and (second & 0xFC000000) == 0x94000000
    if first in (ARM64_NOP, ARM64_MOV_X9_X30) and (second == ARM64_NOP or is_bl):
        offset += 8
    return offset

"""Relocation edits for modules loaded by old kernels: PLT32 → PC32.

binutils ≥ 2.31 marks calls to external functions ``R_X86_64_PLT32`` (and
≥ 2.36, on i386, ``R_386_PLT32``). Kernels before 4.16 (x86_64) and 5.12
(i386) do not know these types: a 2.6.11 loader says "Unknown rela
relocation: 4". In a module there is no PLT, so the PLT32 relocation resolves
exactly as PC32 (S + A − P): rewriting the type, in place, is all it takes.

The relocation sections are found with pyelftools; the edit itself is a few
bytes of ``r_info`` per entry, so the file keeps its size and layout.
"""
from __future__ import annotations

import io
import struct
from dataclasses import dataclass

from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection

# ELF machine → (PLT32 type, PC32 type), from the psABIs (same numbers on both)
PLT32_TO_PC32 = {
    62: (4, 2),   # EM_X86_64: R_X86_64_PLT32 → R_X86_64_PC32 (RELA)
    3: (4, 2),    # EM_386:    R_386_PLT32    → R_386_PC32    (REL)
}


@dataclass(frozen=True)
class RelocEdit:
    section: str
    count: int


def rewrite_plt32(data: bytes) -> tuple[bytes, list[RelocEdit]]:
    """The object with every PLT32 relocation made PC32, and what changed per section.

    An object of another machine, or one without PLT32 relocations, comes back unchanged.
    """
    elf = ELFFile(io.BytesIO(data))
    types = PLT32_TO_PC32.get(_machine_number(elf))
    if types is None:
        return data, []
    plt32, pc32 = types
    out = bytearray(data)
    endian = "<" if elf.little_endian else ">"
    edits = []
    for sec in elf.iter_sections():
        if not isinstance(sec, RelocationSection):
            continue
        entsize, base = sec["sh_entsize"], sec["sh_offset"]
        count = 0
        for i in range(sec.num_relocations()):
            at = base + i * entsize + (8 if elf.elfclass == 64 else 4)   # r_info follows r_offset
            if elf.elfclass == 64:
                (info,) = struct.unpack_from(endian + "Q", out, at)
                if info & 0xFFFFFFFF == plt32:
                    struct.pack_into(endian + "Q", out, at, (info & ~0xFFFFFFFF) | pc32)
                    count += 1
            else:
                (info,) = struct.unpack_from(endian + "I", out, at)
                if info & 0xFF == plt32:
                    struct.pack_into(endian + "I", out, at, (info & ~0xFF) | pc32)
                    count += 1
        if count:
            edits.append(RelocEdit(sec.name, count))
    return bytes(out), edits


def count_type(data: bytes, rtype: int) -> int:
    """How many relocations of this type the object has (all relocation sections)."""
    elf = ELFFile(io.BytesIO(data))
    return sum(1 for sec in elf.iter_sections() if isinstance(sec, RelocationSection)
               for rel in sec.iter_relocations()
               if rel["r_info_type"] == rtype)


def _machine_number(elf: ELFFile) -> int:
    """pyelftools names e_machine (``EM_X86_64``); the raw number is in the header bytes."""
    elf.stream.seek(18)
    return struct.unpack(("<" if elf.little_endian else ">") + "H", elf.stream.read(2))[0]

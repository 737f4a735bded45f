"""The current task where the kernel describes neither itself nor its per-CPU data: i386.

Debian's 686 kernels have no BTF and no data symbols in kallsyms, so:

* ``task_struct``'s offsets come from an object built against the kernel's own
  headers (``templates/task_offsets``: ``offsetof`` in a table, read from the
  ``.ko``; never loaded), as the kernel's asm-offsets are made;
* where ``current`` lives is read from the code: the arch profile names a
  function that starts by loading it (``current_reader``, i386's getpid
  wrapper); its first ``%fs``-relative load (``mov %fs:ADDR, reg``) gives the
  per-CPU address, relocated as the running kernel is (KASLR), so it is read
  per boot, from the guest's memory, and added to ``fs_base``.
"""
from __future__ import annotations

import struct

from vmprobe.config import TEMPLATES_DIR
from vmprobe.formats import elf

SOURCE = TEMPLATES_DIR / "task_offsets" / "vmprobe_task_offsets.c"
MAGIC = 0x766D7074
#: bytes of the reader function searched for its first %fs load
READER_WINDOW = 64


class NoOffsets(Exception):
    pass


def offsets_from_object(data: bytes) -> dict[str, int]:
    """pid, tgid, comm, flags, pointer size from a built ``vmprobe_task_offsets.ko``."""
    found = next(((sec, value, size) for name, sec, value, size, _ in elf.symbols(data)
                  if name == "vmprobe_task_offsets"), None)
    blob = elf.section(data, found[0]) if found else None
    if not found or blob is None or len(blob) < found[1] + 24:
        raise NoOffsets("vmprobe_task_offsets is not in the built object")
    end = "<" if data[5] == 1 else ">"
    magic, pid, tgid, comm, flags, pointer = struct.unpack_from(end + "6I", blob, found[1])
    if magic != MAGIC:
        raise NoOffsets(f"vmprobe_task_offsets starts with {magic:#x}, not the table's mark")
    return {"pid": pid, "tgid": tgid, "comm": comm, "flags": flags, "pointer_size": pointer}


def fs_load_address(code: bytes) -> int | None:
    """The 32-bit address of the first ``mov %fs:ADDR, reg`` in ``code`` (``64 a1 ADDR`` into
    eax, ``64 8b /r`` with a disp32-only ModRM for the others), or None."""
    for i in range(len(code) - 5):
        if code[i] != 0x64:
            continue
        if code[i + 1] == 0xA1:
            return struct.unpack_from("<I", code, i + 2)[0]
        if code[i + 1] == 0x8B and i + 6 < len(code) and code[i + 2] & 0xC7 == 0x05:
            return struct.unpack_from("<I", code, i + 3)[0]
    return None

"""The probes a module registered, and what each of them is.

Discovery is the difference between ``kprobes/list`` before and after the
module loaded: every new line is a probe it registered, with its type
(``k`` kprobe, ``r`` kretprobe), address, ``symbol+offset`` and flags.

The handlers are read from the module itself, in the running guest: a
``struct kprobe`` holds the probe's address in ``addr`` (after two list
heads and ``nmissed``), followed by ``symbol_name``, ``offset``,
``pre_handler`` and ``post_handler``; a ``struct kretprobe`` starts with its
``kp`` and is followed by ``handler`` and ``entry_handler``. The module's data
sections are searched for the address, and the pointers next to it are named
from the module's symbol table.
"""
from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field

from vmprobe.formats.kprobes_list import ProbeRecord
from vmprobe.modules.introspect import ModuleImage

KINDS = {"k": "kprobe", "r": "kretprobe", "f": "fprobe"}   # f: check/fprobes.py
#: how far past a kretprobe's kp.addr its handler pointers are searched, in words
KRETPROBE_WINDOW = 48


def discover(before: list[ProbeRecord], after: list[ProbeRecord]) -> list[ProbeRecord]:
    """Probes in ``after`` that ``before`` did not have (by address and type)."""
    old = {(r.address, r.type) for r in before}
    return [r for r in after if (r.address, r.type) not in old]


def _registration_of(rec: ProbeRecord, registrations) -> int | None:
    """The index of the registration that made probe ``rec``: by address, else by name at the
    listed offset, else the nearest one by name before it (the kernel may move a probe on by
    a few bytes: past an IBT ENDBR, sym+0 is armed at sym+4)."""
    regs = list(registrations)
    for i, reg in enumerate(regs):
        if reg.addr and reg.addr == rec.address:
            return i
    near = [(rec.offset - reg.offset, i) for i, reg in enumerate(regs)
            if reg.symbol == rec.symbol and 0 <= rec.offset - reg.offset <= 16]
    return min(near)[1] if near else None


def in_registration_order(records: list[ProbeRecord], registrations) -> list[ProbeRecord]:
    """The probes in the order the module registered them (the list's order is a hash's);
    the first one is the one examined most closely."""
    def rank(rec: ProbeRecord) -> int:
        i = _registration_of(rec, registrations)
        return len(registrations) if i is None else i
    return sorted(records, key=rank)


def registered_offset(rec: ProbeRecord, registrations) -> int | None:
    """The offset the module asked for, by name, of the probe the list shows as ``rec`` (None
    when no registration by name was seen for it)."""
    i = _registration_of(rec, registrations)
    reg = None if i is None else list(registrations)[i]
    return reg.offset if reg is not None and reg.symbol == rec.symbol else None


def kind_of(record: ProbeRecord) -> str:
    return KINDS.get(record.type, f"other ({record.type})")


@dataclass
class Handlers:
    """A probe's handlers as the module set them (function names), and where its struct is."""
    struct_address: int | None = None
    pre: str | None = None
    post: str | None = None
    entry: str | None = None        # kretprobe
    ret: str | None = None          # kretprobe: the return handler
    maxactive: int | None = None
    data_size: int | None = None
    extra: dict = field(default_factory=dict)
    addresses: dict[str, int] = field(default_factory=dict)   # handler name → its runtime address

    def names(self) -> dict[str, str]:
        d = {"pre": self.pre, "post": self.post, "entry": self.entry, "return": self.ret}
        return {k: v for k, v in d.items() if v}

    def describe(self) -> str:
        if self.struct_address is None:
            return "handlers not found in the module's data (a struct allocated at run time?)"
        names = self.names()
        text = ", ".join(f"{k} {v}" for k, v in names.items()) or "no handler of the module's own"
        if self.data_size:
            text += f", {self.data_size} bytes of per-instance data"
        if self.maxactive:
            text += f", maxactive {self.maxactive}"
        return text


def section_bases(listing: str) -> dict[str, int]:
    """``/sys/module/<m>/sections/*`` read as ``name address`` lines → name → address."""
    bases = {}
    for line in listing.splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                bases[parts[0]] = int(parts[1], 16)
            except ValueError:
                continue
    return bases


def find_handlers(record: ProbeRecord, image: ModuleImage, bases: dict[str, int],
                  memory: dict[int, bytes], ptr: int, little: bool = True) -> Handlers:
    """Locate the probe's struct in the module's data (``memory``: runtime base → bytes) and
    name its handlers."""
    fmt = ("<" if little else ">") + ("Q" if ptr == 8 else "I")
    needle = struct.pack(fmt, record.address)

    def word(blob: bytes, at: int) -> int | None:
        return struct.unpack_from(fmt, blob, at)[0] if 0 <= at <= len(blob) - ptr else None

    seen: dict[str, int] = {}

    def name(value: int | None) -> str | None:
        f = image.function_at(value, bases) if value else None
        if f:
            seen[f.name] = value
        return f.name if f else None

    for base, blob in memory.items():
        at = blob.find(needle)
        while at >= 0:
            if at % ptr == 0 and at >= 5 * ptr:
                h = Handlers(struct_address=base + at - 5 * ptr)
                if record.type == "r":
                    _kretprobe(h, blob, at, word, name, ptr)
                else:
                    h.pre, h.post = name(word(blob, at + 3 * ptr)), name(word(blob, at + 4 * ptr))
                h.addresses = {n: seen[n] for n in h.names().values()}
                return h
            at = blob.find(needle, at + 1)
    return Handlers()


def _kretprobe(h: Handlers, blob: bytes, at: int, word, name, ptr: int) -> None:
    """handler, entry_handler, maxactive, nmissed, data_size follow the kp: find the first
    pointer into the module's text past the kp's own fields."""
    for i in range(5, KRETPROBE_WINDOW):
        value = word(blob, at + i * ptr)
        if value is None:
            return
        if name(value):
            h.ret = name(value)
            h.entry = name(word(blob, at + (i + 1) * ptr))
            after = at + (i + 2) * ptr
            if after + 8 <= len(blob):
                h.maxactive = struct.unpack_from("<i", blob, after)[0]
            size = word(blob, after + 8)   # after int maxactive and int nmissed
            h.data_size = size if size is not None and size < 1 << 20 else None
            return


_NOISE = re.compile(r"vmprobe-|loading out-of-tree module taints|module verification failed")


def module_lines(text: str) -> list[str]:
    """The kernel lines printed between two marks, timestamps and vmprobe's own lines aside."""
    out = []
    for line in text.splitlines():
        line = re.sub(r"^\[\s*\d+\.\d+\]\s*", "", line.strip())
        if line and not _NOISE.search(line):
            out.append(line)
    return out

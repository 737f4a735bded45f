"""Just enough BTF (the kernel's own type info, ``.BTF`` / ``/sys/kernel/btf/vmlinux``) to
find a struct's members and a per-CPU variable's offset.

Format: ``Documentation/bpf/btf.rst``. A header, then the type section (each
type a 12-byte ``btf_type`` followed by kind-specific data), then the string
section. Type ids count from 1 in the order the types appear.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

MAGIC = 0xEB9F

# kind → bytes that follow the 12-byte btf_type: fixed, and per vlen entry
_INT, _PTR, _ARRAY, _STRUCT, _UNION, _ENUM, _FWD, _TYPEDEF, _VOLATILE, _CONST, _RESTRICT = range(1, 12)
_FUNC, _FUNC_PROTO, _VAR, _DATASEC, _FLOAT, _DECL_TAG, _TYPE_TAG, _ENUM64 = range(12, 20)
_EXTRA = {_INT: (4, 0), _PTR: (0, 0), _ARRAY: (12, 0), _STRUCT: (0, 12), _UNION: (0, 12),
          _ENUM: (0, 8), _FWD: (0, 0), _TYPEDEF: (0, 0), _VOLATILE: (0, 0), _CONST: (0, 0),
          _RESTRICT: (0, 0), _FUNC: (0, 0), _FUNC_PROTO: (0, 8), _VAR: (4, 0), _DATASEC: (0, 12),
          _FLOAT: (0, 0), _DECL_TAG: (4, 0), _TYPE_TAG: (0, 0), _ENUM64: (0, 12)}


class BtfError(ValueError):
    pass


@dataclass
class Member:
    name: str
    offset: int          # bytes from the start of the struct
    type_id: int


@dataclass
class Btf:
    """The parsed parts of a BTF blob vmprobe asks about."""
    structs: dict[str, list[Member]] = field(default_factory=dict)   # first struct of each name
    percpu: dict[str, int] = field(default_factory=dict)             # var → offset in .data..percpu
    sizes: dict[int, int] = field(default_factory=dict)              # struct/union id → size

    def member(self, struct_name: str, name: str) -> Member | None:
        """A member of a struct, looking into anonymous struct/union members too."""
        return _find(self, self.structs.get(struct_name, []), name, 0)


def _find(btf: Btf, members: list[Member], name: str, base: int) -> Member | None:
    for m in members:
        if m.name == name:
            return Member(m.name, base + m.offset, m.type_id)
    for m in members:
        if not m.name and m.type_id in btf._anon:          # type: ignore[attr-defined]
            found = _find(btf, btf._anon[m.type_id], name, base + m.offset)  # type: ignore[attr-defined]
            if found:
                return found
    return None


def find_blob(image: bytes) -> bytes | None:
    """The vmlinux BTF inside a raw kernel image (arm64's ``Image``: no ELF sections to
    look in): the first little-endian version-1 header whose string section follows its
    type section, cut to its length."""
    at = image.find(b"\x9f\xeb\x01\x00\x18\x00\x00\x00")
    while at >= 0:
        type_off, type_len, str_off, str_len = struct.unpack_from("<4I", image, at + 8)
        end = at + 24 + str_off + str_len
        if type_off == 0 and str_off == type_len and end <= len(image):
            return image[at:end]
        at = image.find(b"\x9f\xeb\x01\x00\x18\x00\x00\x00", at + 1)
    return None


def parse(data: bytes, structs: tuple[str, ...] = (), datasec: str = ".data..percpu") -> Btf:
    """Parse ``data``: the members of the named ``structs`` (and of every anonymous
    struct/union, for nested lookups) and the variables of ``datasec``."""
    if len(data) < 24:
        raise BtfError("too short for a BTF header")
    magic, = struct.unpack_from("<H", data, 0)
    end = "<" if magic == MAGIC else ">"
    if struct.unpack_from(end + "H", data, 0)[0] != MAGIC:
        raise BtfError(f"bad BTF magic {data[:2].hex()}")
    hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from(end + "5I", data, 4)
    types_at = hdr_len + type_off
    strings = data[hdr_len + str_off:hdr_len + str_off + str_len]

    def name(off: int) -> str:
        return strings[off:strings.index(b"\0", off)].decode(errors="replace") if off < len(strings) else ""

    wanted = set(structs)
    btf = Btf()
    anon: dict[int, list[Member]] = {}
    var_names: dict[int, str] = {}
    sections: list[tuple[str, list[tuple[int, int]]]] = []
    pos, limit, type_id = types_at, types_at + type_len, 0
    unpack_type = struct.Struct(end + "III").unpack_from
    unpack_member = struct.Struct(end + "III").unpack_from
    while pos < limit:
        type_id += 1
        name_off, info, size = unpack_type(data, pos)
        kind, vlen, kflag = (info >> 24) & 0x1F, info & 0xFFFF, info >> 31
        if kind not in _EXTRA:
            raise BtfError(f"unknown BTF kind {kind} (type {type_id})")
        fixed, per = _EXTRA[kind]
        body = pos + 12
        pos = body + fixed + per * vlen
        if kind in (_STRUCT, _UNION):
            type_name = name(name_off) if name_off else ""
            if type_name in wanted and type_name not in btf.structs or not type_name:
                members = []
                for i in range(vlen):
                    m_name, m_type, m_off = unpack_member(data, body + 12 * i)
                    bits = m_off & 0xFFFFFF if kflag else m_off
                    members.append(Member(name(m_name) if m_name else "", bits // 8, m_type))
                if type_name:
                    btf.structs[type_name] = members
                else:
                    anon[type_id] = members
                btf.sizes[type_id] = size
        elif kind == _VAR:
            var_names[type_id] = name(name_off)
        elif kind == _DATASEC and name(name_off) == datasec:
            sections.append((datasec, [unpack_member(data, body + 12 * i)[:2] for i in range(vlen)]))
    for _, entries in sections:
        for var_type, offset in entries:
            if var_type in var_names:
                btf.percpu[var_names[var_type]] = offset
    btf._anon = anon   # type: ignore[attr-defined]
    return btf

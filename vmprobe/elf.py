"""Just enough ELF to read a kernel module's ``.modinfo`` (depends, vermagic)."""
from __future__ import annotations

import lzma
import struct
import subprocess
from pathlib import Path


def read_module(path: Path) -> bytes:
    """A module's bytes, decompressing ``.ko.xz`` / ``.ko.zst`` / ``.ko.gz``."""
    data = path.read_bytes()
    if path.suffix == ".xz":
        return lzma.decompress(data)
    if path.suffix == ".gz":
        import gzip
        return gzip.decompress(data)
    if path.suffix == ".zst":
        return subprocess.run(["zstd", "-dc", str(path)], capture_output=True, check=True).stdout
    return data


def _sections(data: bytes):
    """(name, contents) of each section."""
    if data[:4] != b"\x7fELF":
        raise ValueError("not an ELF file")
    is64 = data[4] == 2
    end = "<" if data[5] == 1 else ">"
    if is64:
        shoff, = struct.unpack_from(end + "Q", data, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from(end + "HHH", data, 0x3A)
        fmt, name_off, off_off, size_off = end + "IIQQQQ", 0, 4, 5
    else:
        shoff, = struct.unpack_from(end + "I", data, 0x20)
        shentsize, shnum, shstrndx = struct.unpack_from(end + "HHH", data, 0x2E)
        fmt, name_off, off_off, size_off = end + "IIIIII", 0, 4, 5

    def header(i: int) -> tuple:
        return struct.unpack_from(fmt, data, shoff + i * shentsize)

    strtab = header(shstrndx)
    names = data[strtab[off_off]:strtab[off_off] + strtab[size_off]]
    for i in range(shnum):
        h = header(i)
        name = names[h[name_off]:names.index(b"\0", h[name_off])].decode()
        yield name, data[h[off_off]:h[off_off] + h[size_off]]


def section(data: bytes, wanted: str) -> bytes | None:
    return next((contents for name, contents in _sections(data) if name == wanted), None)


def section_names(data: bytes) -> list[str]:
    return [name for name, _ in _sections(data)]


def modinfo(data: bytes) -> dict[str, list[str]]:
    """``.modinfo`` key=value strings as key → values."""
    raw = section(data, ".modinfo") or b""
    info: dict[str, list[str]] = {}
    for item in raw.split(b"\0"):
        if b"=" in item:
            key, _, value = item.decode(errors="replace").partition("=")
            info.setdefault(key, []).append(value)
    return info

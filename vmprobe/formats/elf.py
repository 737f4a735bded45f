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


def e_machine(data: bytes) -> int:
    """The ELF file's e_machine number (the arch table says which arch that is)."""
    if data[:4] != b"\x7fELF":
        raise ValueError("not an ELF file")
    number, = struct.unpack_from("<H" if data[5] == 1 else ">H", data, 0x12)
    return number


def dynamic(data: bytes) -> tuple[str | None, list[str]]:
    """(PT_INTERP path, DT_NEEDED sonames) of an executable or library; (None, []) if static."""
    interp_raw = section(data, ".interp")
    interp = interp_raw.rstrip(b"\0").decode() if interp_raw else None
    dyn, dynstr = section(data, ".dynamic"), section(data, ".dynstr")
    if not dyn or not dynstr:
        return interp, []
    is64, end = data[4] == 2, "<" if data[5] == 1 else ">"
    fmt = end + ("qQ" if is64 else "iI")
    size = struct.calcsize(fmt)
    needed = []
    for off in range(0, len(dyn) - size + 1, size):
        tag, value = struct.unpack_from(fmt, dyn, off)
        if tag == 0:  # DT_NULL
            break
        if tag == 1:  # DT_NEEDED
            needed.append(dynstr[value:dynstr.index(b"\0", value)].decode())
    return interp, needed


def _headers(data: bytes):
    """(name, type, offset, size, link) of each section."""
    is64 = data[4] == 2
    end = "<" if data[5] == 1 else ">"
    if is64:
        shoff, = struct.unpack_from(end + "Q", data, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from(end + "HHH", data, 0x3A)
        fmt = end + "IIQQQQII"
    else:
        shoff, = struct.unpack_from(end + "I", data, 0x20)
        shentsize, shnum, shstrndx = struct.unpack_from(end + "HHH", data, 0x2E)
        fmt = end + "IIIIIIII"
    raw = [struct.unpack_from(fmt, data, shoff + i * shentsize) for i in range(shnum)]
    names = data[raw[shstrndx][4]:raw[shstrndx][4] + raw[shstrndx][5]]
    return [(names[h[0]:names.index(b"\0", h[0])].decode(), h[1], h[4], h[5], h[6]) for h in raw]


def section_sizes(data: bytes) -> dict[str, int]:
    """Section name → size (in memory) for every named section."""
    return {name: size for name, _t, _o, size, _l in _headers(data) if name}


def symbols(data: bytes) -> list[tuple[str, str, int, int, str]]:
    """(name, section, value, size, type) of each named symbol in ``.symtab``; type is
    ``func``, ``object`` or ``other``. In a relocatable object (a ``.ko``) the value
    is an offset into its section."""
    if data[:4] != b"\x7fELF":
        raise ValueError("not an ELF file")
    headers = _headers(data)
    is64, end = data[4] == 2, "<" if data[5] == 1 else ">"
    symtab = next((h for h in headers if h[1] == 2), None)   # SHT_SYMTAB
    if symtab is None:
        return []
    strtab = headers[symtab[4]]
    strings = data[strtab[2]:strtab[2] + strtab[3]]
    fmt = end + ("IBBHQQ" if is64 else "IIIBBH")
    size = struct.calcsize(fmt)
    out = []
    for off in range(symtab[2], symtab[2] + symtab[3] - size + 1, size):
        if is64:
            name, info, _other, shndx, value, sym_size = struct.unpack_from(fmt, data, off)
        else:
            name, value, sym_size, info, _other, shndx = struct.unpack_from(fmt, data, off)
        if not name or not 0 < shndx < len(headers):
            continue
        kind = {2: "func", 1: "object"}.get(info & 0xF, "other")
        out.append((strings[name:strings.index(b"\0", name)].decode(errors="replace"),
                    headers[shndx][0], value, sym_size, kind))
    return out


def strings(data: bytes, prefix: str = ".rodata") -> list[str]:
    """NUL-separated printable strings in the sections whose names start with ``prefix``."""
    found = []
    for name, contents in _sections(data):
        if name.startswith(prefix):
            for item in contents.split(b"\0"):
                if 2 <= len(item) <= 128 and all(32 <= c < 127 for c in item):
                    found.append(item.decode())
    return found


def glibc_problem(data: bytes) -> str | None:
    """Why a program would not run on a kernel older than 3.2 (glibc's floor: its start-up
    code says "FATAL: kernel too old"), or None: a loader (PT_INTERP), shared libraries,
    GLIBC_ symbol versions needed, or glibc's own strings (GLIBC_TUNABLES…) linked in statically."""
    import io

    from elftools.elf.elffile import ELFFile
    from elftools.elf.gnuversions import GNUVerNeedSection

    elf = ELFFile(io.BytesIO(data))
    interp = [seg.get_interp_name() for seg in elf.iter_segments() if seg.header.p_type == "PT_INTERP"]
    if interp:
        return f"it is dynamically linked (loader {interp[0]})"
    _, needed = dynamic(data)
    if needed:
        return f"it needs shared libraries ({', '.join(needed)})"
    versions = sorted({aux.name for sec in elf.iter_sections() if isinstance(sec, GNUVerNeedSection)
                       for _, auxes in sec.iter_versions() for aux in auxes if aux.name.startswith("GLIBC_")})
    if versions:
        return f"it needs glibc symbol versions ({', '.join(versions)})"
    if b"GLIBC_" in data:
        return "it has glibc linked in statically (GLIBC_ strings)"
    return None

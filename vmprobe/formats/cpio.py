"""A newc cpio writer: initramfs archives built in-process, byte-for-byte reproducible.

Entries are added with explicit owner, mode and mtime 0, so the same inputs
give the same archive (and the same cache key) on any host, with no
dependence on the host's file ownership or a ``cpio`` binary.
"""
from __future__ import annotations

import gzip
import io
import stat
from pathlib import PurePosixPath


class NewcArchive:
    def __init__(self) -> None:
        self._buf = io.BytesIO()
        self._ino = 1
        self._seen: set[str] = set()

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0),
               nlink: int = 1) -> None:
        name = name.lstrip("/")
        fields = [self._ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1],
                  len(name) + 1, 0]
        self._ino += 1
        header = b"070701" + b"".join(b"%08X" % v for v in fields)
        self._write_padded(header + name.encode() + b"\0")
        self._write_padded(data)

    def _write_padded(self, data: bytes) -> None:
        self._buf.write(data)
        self._buf.write(b"\0" * (-self._buf.tell() % 4))

    def _parents(self, path: str) -> None:
        for parent in reversed(PurePosixPath(path.lstrip("/")).parents):
            p = str(parent)
            if p != "." and p not in self._seen:
                self.dir(p)

    def dir(self, path: str, mode: int = 0o755) -> None:
        path = path.lstrip("/")
        if path in self._seen:
            return
        self._parents(path)
        self._seen.add(path)
        self._entry(path, stat.S_IFDIR | mode, nlink=2)

    def file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self._parents(path)
        self._seen.add(path.lstrip("/"))
        self._entry(path, stat.S_IFREG | mode, data)

    def symlink(self, path: str, target: str) -> None:
        self._parents(path)
        self._seen.add(path.lstrip("/"))
        self._entry(path, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, path: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._parents(path)
        self._seen.add(path.lstrip("/"))
        self._entry(path, stat.S_IFCHR | mode, rdev=(major, minor))

    def plain(self) -> bytes:
        """The archive with its trailer, uncompressed: what a boot reads fastest (every kernel
        takes it; gunzipping ≈7 MB cost 0.15–0.3 s of guest time under TCG)."""
        self._entry("TRAILER!!!", 0)
        return self._buf.getvalue()

    def gzipped(self) -> bytes:
        """The archive with its trailer, gzip-compressed (mtime 0: reproducible)."""
        return gzip.compress(self.plain(), compresslevel=6, mtime=0)


def read_newc(data: bytes) -> dict[str, tuple[int, bytes]]:
    """path → (mode, contents) of a newc archive (checked strictly: magic, padding, the
    trailer); a symlink's contents are its target, a device's its ``major:minor``."""
    entries: dict[str, tuple[int, bytes]] = {}
    off = 0
    while True:
        if data[off:off + 6] != b"070701":
            raise ValueError(f"no newc header at offset {off} (magic {data[off:off + 6]!r})")
        try:
            fields = [int(data[off + 6 + 8 * i:off + 14 + 8 * i], 16) for i in range(13)]
        except ValueError:
            raise ValueError(f"a newc header at offset {off} has a field that is not hex") from None
        mode, size, rdev, namesize = fields[1], fields[6], (fields[9], fields[10]), fields[11]
        name_end = off + 110 + namesize
        if namesize < 1 or data[name_end - 1:name_end] != b"\0" or name_end > len(data):
            raise ValueError(f"the newc entry at offset {off} has a broken name")
        name = data[off + 110:name_end - 1].decode()
        start = name_end + (-name_end % 4)
        body = data[start:start + size]
        if len(body) != size:
            raise ValueError(f"{name} is cut short ({len(body)} of {size} bytes)")
        if name == "TRAILER!!!":
            return entries
        if name in entries:
            raise ValueError(f"{name} appears twice in the archive")
        entries[name] = (mode, f"{rdev[0]}:{rdev[1]}".encode() if stat.S_ISCHR(mode) else body)
        off = start + size + (-(start + size) % 4)
        if off >= len(data):
            raise ValueError("the archive has no TRAILER!!! entry")

"""vmprobe.formats.cpio: the newc writer, checked with the system cpio tool."""
from __future__ import annotations

import gzip
import os
import re
import shutil
import stat
import subprocess

import pytest

from vmprobe.formats.cpio import NewcArchive, read_newc

pytestmark = pytest.mark.skipif(not shutil.which("cpio"), reason="cpio not installed")

BLOB = bytes(range(256)) * 4 + b"\x01\x02\x03"   # 1027 bytes: needs padding

_LINE = re.compile(r"^(?P<mode>\S{10})\s+(?P<nlink>\d+)\s+(?P<uid>\d+)\s+(?P<gid>\d+)\s+"
                   r"(?:(?P<major>\d+),\s*(?P<minor>\d+)|(?P<size>\d+))\s+"
                   r"(?P<date>\w{3}\s+\d+\s+\d{4})\s+(?P<name>.+?)(?: -> (?P<target>.+))?$")


def cpio_list(raw: bytes) -> dict[str, dict]:
    """`cpio -itvn` of an uncompressed archive: name → fields (in order)."""
    proc = subprocess.run(["cpio", "-itvn", "--quiet"], input=raw, capture_output=True,
                          env=dict(os.environ, TZ="UTC", LC_ALL="C"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == b"", proc.stderr
    out = {}
    for line in proc.stdout.decode().splitlines():
        m = _LINE.match(line)
        assert m, line
        assert m["name"] not in out, f"duplicate entry {m['name']}"
        out[m["name"]] = m.groupdict()
    return out


def cpio_cat(raw: bytes, name: str) -> bytes:
    proc = subprocess.run(["cpio", "-i", "--to-stdout", "--quiet", name], input=raw, capture_output=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def build() -> NewcArchive:
    a = NewcArchive()
    a.dir("bin")
    a.dir("/root/.ssh", 0o700)
    a.dir("etc/dropbear")
    a.file("/etc/hosts", b"127.0.0.1 localhost vmprobe\n")
    a.file("bin/busybox", BLOB, 0o755)
    a.file("lib/modules/vmprobe/virtio_net.ko", b"\x7fELF", 0o644)
    a.symlink("sbin", "/bin")
    a.symlink("bin/sh", "busybox")
    a.chardev("dev/console", 5, 1)
    a.chardev("dev/null", 1, 3, 0o666)
    a.dir("bin")  # again: no duplicate
    return a


@pytest.fixture(scope="module")
def raw() -> bytes:
    return gzip.decompress(build().gzipped())


def test_names_and_parent_dirs_first(raw):
    entries = cpio_list(raw)
    names = list(entries)
    assert set(names) == {"bin", "root", "root/.ssh", "etc", "etc/dropbear", "etc/hosts", "bin/busybox",
                          "lib", "lib/modules", "lib/modules/vmprobe", "lib/modules/vmprobe/virtio_net.ko",
                          "sbin", "bin/sh", "dev", "dev/console", "dev/null"}
    for name in names:  # no absolute names, every parent before its child
        assert not name.startswith("/")
        parent = name.rpartition("/")[0]
        if parent:
            assert names.index(parent) < names.index(name), name


@pytest.mark.parametrize("name, mode", [
    ("bin", "drwxr-xr-x"),
    ("root", "drwxr-xr-x"),
    ("root/.ssh", "drwx------"),
    ("lib/modules/vmprobe", "drwxr-xr-x"),
    ("etc/hosts", "-rw-r--r--"),
    ("bin/busybox", "-rwxr-xr-x"),
    ("sbin", "lrwxrwxrwx"),
    ("dev/console", "crw-------"),
    ("dev/null", "crw-rw-rw-"),
])
def test_types_and_modes(raw, name, mode):
    assert cpio_list(raw)[name]["mode"] == mode


def test_owner_mtime_and_sizes(raw):
    entries = cpio_list(raw)
    for e in entries.values():
        assert (e["uid"], e["gid"]) == ("0", "0")
        assert re.fullmatch(r"Jan\s+1\s+1970", e["date"]), e  # mtime 0 (TZ=UTC)
    assert entries["bin/busybox"]["size"] == str(len(BLOB))
    assert entries["etc/hosts"]["size"] == "28"
    assert entries["bin"]["nlink"] == "2"


def test_symlink_targets(raw):
    entries = cpio_list(raw)
    assert entries["sbin"]["target"] == "/bin"
    assert entries["bin/sh"]["target"] == "busybox"
    assert entries["sbin"]["size"] == "4"


def test_device_numbers(raw):
    entries = cpio_list(raw)
    assert (entries["dev/console"]["major"], entries["dev/console"]["minor"]) == ("5", "1")
    assert (entries["dev/null"]["major"], entries["dev/null"]["minor"]) == ("1", "3")


def test_file_contents(raw):
    assert cpio_cat(raw, "bin/busybox") == BLOB
    assert cpio_cat(raw, "etc/hosts") == b"127.0.0.1 localhost vmprobe\n"


def test_newc_layout(raw):
    assert raw.startswith(b"070701")
    assert len(raw) % 4 == 0
    assert raw.count(b"070701") >= 17  # 16 entries + trailer
    trailer = raw.rindex(b"070701")
    assert raw[trailer + 110:trailer + 121] == b"TRAILER!!!\0"


def test_reproducible():
    first, second = build().gzipped(), build().gzipped()
    assert first == second
    assert first[:2] == b"\x1f\x8b"
    assert first[4:8] == b"\0\0\0\0"  # gzip mtime 0
    other = build()
    other.file("etc/extra", b"x")
    assert other.gzipped() != first


def test_concatenated_archives_both_list():
    # the initrd is base + run layer; cpio reads the first, the kernel unpacks both
    a, b = NewcArchive(), NewcArchive()
    a.file("one", b"1")
    b.file("two", b"2")
    both = gzip.decompress(a.gzipped() + b.gzipped())
    assert list(cpio_list(both)) == ["one"]
    assert both.count(b"TRAILER!!!") == 2
    assert both.index(b"two") > both.index(b"TRAILER!!!")


def test_reader_agrees_with_the_cpio_tool(raw):
    entries = read_newc(raw)
    listed = cpio_list(raw)
    assert list(entries) == list(listed)
    assert entries["bin/busybox"] == (stat.S_IFREG | 0o755, BLOB)
    assert entries["sbin"] == (stat.S_IFLNK | 0o777, b"/bin")
    assert entries["dev/null"] == (stat.S_IFCHR | 0o666, b"1:3")
    assert stat.S_ISDIR(entries["root/.ssh"][0]) and entries["root/.ssh"][0] & 0o777 == 0o700


@pytest.mark.parametrize("damage, error", [
    (lambda r: b"070707" + r[6:], "no newc header at offset 0"),
    (lambda r: r[:r.rindex(b"070701")], "no TRAILER"),
    (lambda r: r[:len(r) // 2], "cut short|no newc header|broken name"),
    (lambda r: r[:6] + b"zzzzzzzz" + r[14:], "not hex"),
])
def test_reader_refuses_damaged_archives(raw, damage, error):
    with pytest.raises(ValueError, match=error):
        read_newc(damage(raw))

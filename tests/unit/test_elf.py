"""vmprobe.formats.elf: .modinfo from real gcc-made objects (64/32-bit) and compressed modules."""
from __future__ import annotations

import gzip
import lzma
import shutil
import subprocess
from pathlib import Path

import pytest

from vmprobe.formats.elf import modinfo, read_module, section

pytestmark = pytest.mark.skipif(not shutil.which("gcc"), reason="gcc not installed")

MODINFO = ["license=GPL", "depends=virtio,virtio_ring", "alias=virtio:d00000001v*",
           "alias=pci:v00001AF4d00001000sv*", "name=virtio_net",
           "vermagic=6.1.0-13-cloud-amd64 SMP preempt mod_unload modversions "]


def compile_ko(path: Path, strings: list[str], *flags: str) -> Path:
    """A relocatable ELF with each string in .modinfo, as MODULE_INFO() lays them out."""
    src = "".join(f'static const char m{i}[] __attribute__((section(".modinfo"), used, aligned(1))) = "{s}";\n'
                  for i, s in enumerate(strings))
    src += "int vmprobe_test_text(void) { return 42; }\n"
    subprocess.run(["gcc", "-c", "-O2", "-fno-toplevel-reorder", "-x", "c", "-", "-o", str(path), *flags], input=src.encode(),
                   check=True, capture_output=True)
    return path


@pytest.fixture(scope="module")
def ko64(tmp_path_factory) -> Path:
    return compile_ko(tmp_path_factory.mktemp("elf") / "virtio_net.ko", MODINFO)


@pytest.fixture(scope="module")
def ko32(tmp_path_factory) -> Path:
    try:
        return compile_ko(tmp_path_factory.mktemp("elf32") / "virtio_net.ko", MODINFO, "-m32")
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"gcc -m32 does not work here: {exc.stderr.decode()[-200:]}")


def _check(data: bytes) -> None:
    info = modinfo(data)
    assert info["depends"] == ["virtio,virtio_ring"]
    assert info["alias"] == ["virtio:d00000001v*", "pci:v00001AF4d00001000sv*"]
    assert info["name"] == ["virtio_net"]
    assert info["vermagic"] == ["6.1.0-13-cloud-amd64 SMP preempt mod_unload modversions "]
    assert info["license"] == ["GPL"]
    assert set(info) == {"license", "depends", "alias", "name", "vermagic"}


def test_modinfo_64(ko64):
    data = ko64.read_bytes()
    assert data[4] == 2  # ELFCLASS64
    _check(data)


def test_modinfo_32(ko32):
    data = ko32.read_bytes()
    assert data[4] == 1  # ELFCLASS32
    _check(data)


@pytest.mark.parametrize("which", ["ko64", "ko32"])
def test_section_raw_bytes(which, request):
    data = request.getfixturevalue(which).read_bytes()
    raw = section(data, ".modinfo")
    assert raw.split(b"\0")[:2] == [b"license=GPL", b"depends=virtio,virtio_ring"]
    assert section(data, ".no_such_section") is None
    text = section(data, ".text")
    assert text and len(text) >= 6  # mov $42,%eax; ret
    assert section(data, ".shstrtab").count(b".modinfo\0") == 1


def test_no_modinfo_section(tmp_path):
    path = tmp_path / "plain.o"
    subprocess.run(["gcc", "-c", "-x", "c", "-", "-o", str(path)], input=b"int f(void){return 1;}\n",
                   check=True)
    assert section(path.read_bytes(), ".modinfo") is None
    assert modinfo(path.read_bytes()) == {}


@pytest.mark.parametrize("data", [b"", b"MZ\x90\x00" + b"\0" * 60, b"#!/bin/sh\necho hi\n"])
def test_not_elf(data):
    with pytest.raises(ValueError, match="not an ELF"):
        section(data, ".modinfo")


@pytest.mark.skipif(not shutil.which("objcopy"), reason="objcopy not installed")
@pytest.mark.parametrize("target", ["elf64-big", "elf32-big", "elf64-little", "elf32-little"])
def test_both_byte_orders(tmp_path, target):
    blob = tmp_path / "modinfo.bin"
    blob.write_bytes(b"depends=foo\0name=be_mod\0vermagic=4.19.0 SMP\0")
    out = tmp_path / "m.o"
    subprocess.run(["objcopy", "-I", "binary", "-O", target, "--rename-section", ".data=.modinfo",
                    str(blob), str(out)], check=True, capture_output=True)
    data = out.read_bytes()
    assert data[5] == (2 if target.endswith("big") else 1)
    assert modinfo(data) == {"depends": ["foo"], "name": ["be_mod"], "vermagic": ["4.19.0 SMP"]}


def test_read_module_plain_and_compressed(tmp_path, ko64):
    plain = ko64.read_bytes()
    assert read_module(ko64) == plain
    xz = tmp_path / "virtio_net.ko.xz"
    xz.write_bytes(lzma.compress(plain, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32))
    assert read_module(xz) == plain
    gz = tmp_path / "virtio_net.ko.gz"
    gz.write_bytes(gzip.compress(plain))
    assert read_module(gz) == plain
    _check(read_module(xz))


@pytest.mark.skipif(not shutil.which("zstd"), reason="zstd not installed")
def test_read_module_zstd(tmp_path, ko64):
    zst = tmp_path / "virtio_net.ko.zst"
    subprocess.run(["zstd", "-q", "-o", str(zst), str(ko64)], check=True)
    assert read_module(zst) == ko64.read_bytes()


def test_read_module_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_module(tmp_path / "nope.ko")

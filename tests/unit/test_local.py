"""local:PATH specs: reading real kernel images (the cached Debian ones) and build trees."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pytest

from vmprobe.config import cache_dir
from vmprobe.errors import SpecError
from vmprobe.guest.rootfs import required_modules
from vmprobe.kernels import get_kernel, parse_spec
from vmprobe.kernels.local import (
    LocalSpec,
    check_build_dir,
    decompress,
    image_config,
    read_image,
    vermagic_from_image,
    x86_payload,
)
from vmprobe.modules import kernel_vermagic


def _cached(pattern: str) -> list[Path]:
    return sorted(p for p in cache_dir("kernels").glob(pattern) if (p / "kernel.json").exists())


def _images() -> list[Path]:
    found = []
    for entry in _cached("debian-*"):
        found += sorted((entry / "root" / "boot").glob("vmlinuz-*"))
        found += sorted((entry / "root" / "usr/lib/modules").glob("*/vmlinuz"))
    return found


@pytest.fixture
def images(kernel) -> list[Path]:
    """Every Debian kernel image in the cache: at least the session's kernel (fetched if need be),
    and whichever other suites and arches earlier runs fetched."""
    found = _images()
    assert kernel.image_path in found
    return found


def test_release_and_arch_from_real_images(images):
    """The release read from the image's header/banner is the one Debian named the file after."""
    from vmprobe.kernels import Kernel
    for image in images:
        facts = read_image(image)
        release = image.name[len("vmlinuz-"):] if image.name.startswith("vmlinuz-") else image.parent.name
        assert facts.release == release, image
        entry = next(p for p in image.parents if (p / "kernel.json").exists())
        recorded = Kernel.load(entry, verify=False)
        assert facts.arch == recorded.arch, image
        if facts.format == "bzImage":
            assert facts.protocol >= "2.08" and facts.compression, image
            assert facts.banner.startswith(release + " ("), image


def test_x86_payload_is_the_elf_vmlinux(images):
    image = next(p for p in images if read_image(p).format == "bzImage")
    payload, kind = x86_payload(image.read_bytes())
    inner = decompress(payload, kind)
    assert inner[:4] == b"\x7fELF"
    assert b"Linux version " + read_image(image).release.encode() in inner


def test_2_6_era_bzimage_header(tmp_path):
    """A boot-protocol 2.04 bzImage (2.6.9-era): no payload fields, no xloadflags.

    Built byte by byte as the 2.6 setup header lays it out: its version is the
    kernel_version string; the arch cannot be told, so it must be given.
    """
    data = bytearray(0x2000)
    data[0x1F1] = 4                               # setup_sects
    data[0x1FE:0x200] = b"\x55\xaa"
    data[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", data, 0x206, 0x0204)   # boot protocol 2.04
    version = b"2.6.9-vmprobe (root@build) #1 Tue Jan 11 10:00:00 UTC 2005\0"
    struct.pack_into("<H", data, 0x20E, 0x400)    # kernel_version - 0x200
    data[0x600:0x600 + len(version)] = version
    path = tmp_path / "bzImage-2.6.9"
    path.write_bytes(bytes(data))
    with pytest.raises(SpecError, match=r"32- or 64-bit.*\?arch=i386"):
        read_image(path)
    facts = read_image(path, "i386")
    assert (facts.release, facts.arch, facts.protocol) == ("2.6.9-vmprobe", "i386", "2.04")
    assert facts.banner.startswith("2.6.9-vmprobe (root@build) #1")


def test_not_a_kernel(tmp_path):
    junk = tmp_path / "notes.txt"
    junk.write_text("hello\n" * 200)
    with pytest.raises(SpecError, match="not a kernel image"):
        read_image(junk)
    elf = tmp_path / "vmlinux"
    elf.write_bytes(b"\x7fELF" + bytes(100))
    with pytest.raises(SpecError, match="ELF vmlinux, not a bootable image"):
        read_image(elf)
    with pytest.raises(SpecError, match="not a kernel image"):
        get_kernel(f"local:{junk}")


def test_spec_parsing_errors(tmp_path):
    with pytest.raises(SpecError, match="does not exist"):
        parse_spec(f"local:{tmp_path}/nope")
    with pytest.raises(SpecError, match="unknown option 'initrd'"):
        parse_spec(f"local:{tmp_path}?initrd=x")
    with pytest.raises(SpecError, match=r"build=.*does not exist"):
        parse_spec(f"local:{tmp_path}?build={tmp_path}/missing")
    with pytest.raises(SpecError, match="unknown arch 'sparc'"):
        parse_spec(f"local:{tmp_path}?arch=sparc")
    with pytest.raises(SpecError, match="no built kernel"):
        parse_spec("built:0123456789abcdef0123")
    with pytest.raises(SpecError, match="malformed"):
        parse_spec("built:../../etc")
    spec = parse_spec(f"local:{tmp_path}?arch=i386&build={tmp_path}")
    assert isinstance(spec, LocalSpec)
    assert spec.options == {"arch": "i386", "build": str(tmp_path)}
    assert str(spec) == f"local:{tmp_path}?arch=i386&build={tmp_path}"


def test_build_dir_without_what_modules_need(tmp_path):
    (tmp_path / "Makefile").write_text("all:\n")
    (tmp_path / ".config").write_text("CONFIG_MODULES=y\n")
    with pytest.raises(SpecError) as info:
        check_build_dir(tmp_path)
    message = str(info.value)
    assert "include/generated/autoconf.h" in message and "Module.symvers" in message
    assert "Makefile" not in message.split("lacks")[1]
    assert "make modules_prepare" in message
    with pytest.raises(SpecError, match="holds no built kernel image"):
        get_kernel(f"local:{tmp_path}")


def test_local_debian_layout_gives_the_same_kernel(kernel):
    """local: pointed at a cached Debian image finds its config, modules and headers itself."""
    debian = kernel
    local = get_kernel(f"local:{debian.image_path}")
    assert local.spec == f"local:{debian.image_path}"
    assert (local.release, local.arch, local.series) == (debian.release, debian.arch, debian.series)
    assert local.image_path == debian.image_path
    assert local.modules_path == debian.modules_path
    assert local.build_path == debian.build_path
    assert local.kconfig["CONFIG_KPROBES"] == "y"
    assert local.cc == debian.cc
    assert kernel_vermagic(local) == kernel_vermagic(debian)
    assert get_kernel(f"local:{debian.image_path}").root == local.root  # described once


def test_local_image_alone_has_no_modules_or_build(tmp_path, images):
    """A bare image: the guest loads no modules, module builds are refused by name."""
    from vmprobe.modules import build
    debian_image = next(p for p in images if read_image(p).arch == "amd64")
    image = tmp_path / "bzImage"
    image.write_bytes(debian_image.read_bytes())
    kernel = get_kernel(f"local:{image}")
    assert kernel.release == read_image(debian_image).release
    assert required_modules(kernel.modules_path, ["virtio_net"]) == []
    # Debian's vermagic is in the decompressed image
    assert kernel_vermagic(kernel).startswith(kernel.release + " SMP")
    (tmp_path / "m.c").write_text("int x;\n")
    from vmprobe.errors import ModuleBuildError
    with pytest.raises(ModuleBuildError, match="has no build directory"):
        build(tmp_path / "m.c", kernel)
    import shutil
    shutil.rmtree(kernel.root)  # its image lives in tmp_path: do not leave a dangling entry


def test_vermagic_string_search():
    blob = b"xx\x006.1.0 \x00junk\x006.1.0 SMP preempt mod_unload \x00Linux version 6.1.0 (x)\x00"
    assert vermagic_from_image(blob, "6.1.0") == "6.1.0 SMP preempt mod_unload "
    assert vermagic_from_image(blob, "6.2.0") is None


def test_ikconfig_in_an_image(tmp_path):
    """The config an image carries (CONFIG_IKCONFIG: IKCFG_ST + gzip + IKCFG_ED)."""
    config = b"CONFIG_KPROBES=y\nCONFIG_MAGIC_SYSRQ=y\n"
    image = tmp_path / "Image"
    # an arm64 Image header (magic at 0x38) followed by an embedded config
    head = bytearray(0x40)
    head[0x38:0x3C] = b"ARM\x64"
    image.write_bytes(bytes(head) + b"Linux version 6.1.0-x (b) #1\0" + b"IKCFG_ST"
                      + gzip.compress(config) + b"IKCFG_ED")
    assert image_config(image) == config
    assert read_image(image).arch == "arm64"

"""Architecture profiles, foreign guest userland resolution, ELF dynamic info, image checks."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from vmprobe.arch import PROFILES, image_problem, profile_by_name, profile_for, profile_where
from vmprobe.errors import ConfigError
from vmprobe.formats.elf import dynamic, e_machine
from vmprobe.guest.userland import _depends, library_closure
from vmprobe.kernels.apt import failed_suites


def test_profiles_carry_every_arch_difference():
    arm, x86, i386 = profile_for("arm64"), profile_for("amd64"), profile_for("i386")
    assert (arm.qemu, arm.machine, arm.console, arm.pvpanic_device) == \
        ("qemu-system-aarch64", "virt", "ttyAMA0", "pvpanic-pci")
    assert "pauth-impdef=on" in arm.cpu_tcg and "kpti=0" in arm.append
    assert (arm.pc_register, arm.flags_register, arm.gdb_arch) == ("pc", "cpsr", "aarch64")
    assert (i386.qemu, i386.pc_register, i386.flags_register, i386.gdb_arch) == \
        ("qemu-system-i386", "eip", "eflags", "i386")
    assert "nopti" in i386.append and "nopti" in x86.append
    assert not arm.has_optprobes and not arm.has_ftrace_probes and arm.breakpoint_mechanism == "brk"
    assert i386.has_optprobes and i386.has_ftrace_probes and i386.breakpoint_mechanism == "int3"
    with pytest.raises(ConfigError, match="not supported yet"):
        profile_for("riscv64")


def test_names_and_facts_lead_to_one_profile():
    # the names the `arch` marker accepts, per Debian arch (kernel name first)
    assert {d: p.names for d, p in PROFILES.items()} == {
        "amd64": ("x86_64", "amd64", "x86-64", "x64"),
        "i386": ("i386", "i686", "x86_32"),
        "arm64": ("aarch64", "arm64"),
    }
    everyone = [n.lower() for p in PROFILES.values() for n in p.names]
    assert len(everyone) == len(set(everyone))           # no name means two arches
    assert profile_by_name("X86_64") is PROFILES["amd64"] and profile_by_name("i686") is PROFILES["i386"]
    assert profile_by_name("AArch64") is PROFILES["arm64"] and profile_by_name("riscv64") is None
    assert profile_where(elf_machine=3) is PROFILES["i386"] and profile_where(elf_machine=8) is None
    assert profile_where(image_kind="bzImage") is None   # two arches boot one
    assert profile_where(image_kind="bzImage", bits=64) is PROFILES["amd64"]
    assert profile_where(qemu="qemu-system-aarch64").qemu_package == "qemu-system-arm"
    for p in PROFILES.values():
        assert getattr(p.sites, "bits", p.bits) == p.bits


def test_host_debian_arch_without_dpkg(monkeypatch):
    import platform
    import subprocess

    from vmprobe.kernels import apt

    def no_dpkg(*a, **k):
        raise OSError("no dpkg")
    monkeypatch.setattr(subprocess, "run", no_dpkg)
    for machine, debian in (("x86_64", "amd64"), ("aarch64", "arm64"), ("i686", "i386"), ("riscv64", "riscv64")):
        monkeypatch.setattr(platform, "machine", lambda: machine)
        apt.host_debian_arch.cache_clear()
        assert apt.host_debian_arch() == debian
    apt.host_debian_arch.cache_clear()


def test_gdb_and_cross_prefix_follow_the_host(monkeypatch):
    import platform
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    assert PROFILES["amd64"].gdb_binary == "gdb" and PROFILES["amd64"].cross_prefix() == ""
    assert PROFILES["arm64"].gdb_binary == "gdb-multiarch"
    assert PROFILES["arm64"].cross_prefix() == "aarch64-linux-gnu-"
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    assert PROFILES["arm64"].gdb_binary == "gdb" and PROFILES["arm64"].cross_prefix() == ""


def test_image_problem(tmp_path):
    bz = tmp_path / "bz"
    bz.write_bytes(b"\0" * 0x202 + b"HdrS" + b"\0" * 16)
    arm = tmp_path / "Image"
    arm.write_bytes(b"\0" * 0x38 + b"ARM\x64" + b"\0" * 0x200)
    gz = tmp_path / "Image.gz"
    gz.write_bytes(b"\x1f\x8b" + b"\0" * 0x300)
    assert image_problem(PROFILES["amd64"], bz) is None
    assert image_problem(PROFILES["arm64"], arm) is None
    assert "not an aarch64 Image (gzip-compressed)" in image_problem(PROFILES["arm64"], gz)
    assert "not an i386 bzImage" in image_problem(PROFILES["i386"], arm)


def test_failed_suites_from_apt_output():
    out = ("E: Failed to fetch http://mirror.example/debian-security/dists/bookworm-security/main/"
           "binary-i386/Packages.xz  File has unexpected size (346968 != 366648). Mirror sync in progress?\n"
           "   Hashes of expected file:\n"
           "E: Some index files failed to download. They have been ignored, or old ones used instead.\n")
    assert failed_suites(out) == ["bookworm-security"]
    assert failed_suites("E: The repository 'x bookworm Release' is not signed.\n") == []


def test_depends_parsing():
    stanza = {"Pre-Depends": "libc6 (>= 2.34)",
              "Depends": "libcrypt1 (>= 1:4.1.0), zlib1g:any | libz-ng, openssh-client (= 1:9.2p1-2)"}
    assert _depends(stanza) == ["libc6", "libcrypt1", "zlib1g", "openssh-client"]


@pytest.mark.skipif(not Path("/usr/sbin/dropbear").exists(), reason="dropbear-bin not installed")
def test_library_closure_from_dt_needed_on_the_host_tree():
    libs = library_closure(Path("/"), ["/usr/sbin/dropbear"], PROFILES["amd64"])
    names = {Path(p).name for p in libs}
    assert {"libc.so.6", "libz.so.1", "libtomcrypt.so.1", "ld-linux-x86-64.so.2"} <= names
    interp, needed = dynamic(Path("/usr/sbin/dropbear").read_bytes())
    assert interp == "/lib64/ld-linux-x86-64.so.2" and "libc.so.6" in needed
    with pytest.raises(ConfigError, match="built for x86_64"):
        library_closure(Path("/"), ["/usr/sbin/dropbear"], PROFILES["arm64"])


@pytest.mark.skipif(not shutil.which("busybox"), reason="busybox not installed")
def test_static_binary_has_no_dynamic_needs():
    data = Path(shutil.which("busybox")).resolve().read_bytes()
    assert e_machine(data) == PROFILES["amd64"].elf_machine == 62 and dynamic(data) == (None, [])


def test_cached_entries_do_not_mix_686_and_686_pae(tmp_path, monkeypatch):
    from vmprobe.kernels import debian
    from vmprobe.kernels.spec import KernelSpec
    monkeypatch.setattr(debian, "cache_dir", lambda *parts: tmp_path.joinpath(*parts))
    for name in ("debian-bookworm-686-6.1.0-50-6.1.176-1", "debian-bookworm-686-pae-6.1.0-50-6.1.176-1"):
        (tmp_path / "kernels" / name).mkdir(parents=True)
        (tmp_path / "kernels" / name / "kernel.json").write_text("{}")
    plain = debian.DebianProvider.cached_entries(KernelSpec("debian", "bookworm", "686"))
    pae = debian.DebianProvider.cached_entries(KernelSpec("debian", "bookworm", "686-pae"))
    assert [p.name for p in plain] == ["debian-bookworm-686-6.1.0-50-6.1.176-1"]
    assert [p.name for p in pae] == ["debian-bookworm-686-pae-6.1.0-50-6.1.176-1"]

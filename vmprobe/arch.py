"""What differs per guest architecture: QEMU binary, machine, console, gdb names, compilers.

Every architecture difference lives in one :class:`ArchProfile`; the machine,
gdb, module builds and the probe check read it instead of testing arch names.
"""
from __future__ import annotations

import platform
from dataclasses import dataclass
from enum import StrEnum

from vmprobe.errors import ConfigError


class Mechanism(StrEnum):
    """How an armed probe shows in the bytes at its site (a str: JSON and CLI use the value)."""
    INT3 = "int3"            # x86 breakpoint (a plain kprobe)
    BRK = "brk"              # arm64 breakpoint word (brk #4)
    OPTIMIZED = "optimized"  # x86 jump into an optprobe detour
    FTRACE = "ftrace"        # the fentry site's call, through ftrace
    UNARMED = "unarmed"      # the bytes did not change
    UNKNOWN = "unknown"      # changed into something no decoder knows


@dataclass(frozen=True)
class ArchProfile:
    name: str                 # kernel/gdb name: x86_64, i386, aarch64
    debian_arch: str          # amd64, i386, arm64
    qemu: str                 # QEMU system binary
    machine: str
    cpu_tcg: str
    cpu_kvm: str
    console: str              # kernel console device
    append: tuple[str, ...]   # command-line extras (e.g. so gdb can read kernel text)
    gdb_arch: str             # gdb's `set architecture` name
    pc_register: str          # gdb register names
    flags_register: str
    host_machines: tuple[str, ...]  # platform.machine() values that can run it under KVM
    pvpanic_device: str = "pvpanic"  # ISA on pc; PCI on virt
    devices: tuple[str, ...] = ()    # extra -device's (virt has no PS/2 keyboard for QMP send-key)
    image_kind: str = "bzImage"      # what QEMU's -kernel gets: bzImage, or arm64's uncompressed Image
    kbuild_arch: str = ""            # ARCH= for kbuild ("" when the headers' own ARCH is right)
    cross_compile: str = ""          # CROSS_COMPILE= prefix (binutils and CC) for module builds
    breakpoint_mechanism: Mechanism = Mechanism.INT3   # what a plain kprobe writes at its site
    has_optprobes: bool = True           # jump-optimized probes exist on this arch
    has_ftrace_probes: bool = True       # probes on the fentry site ride ftrace
    control_port: str | None = None  # guest tty of a second serial port (warm starts), if any

    @property
    def is_native(self) -> bool:
        return platform.machine() in self.host_machines

    @property
    def gdb_binary(self) -> str:
        """``gdb`` for the host's own architecture, ``gdb-multiarch`` for any other."""
        return "gdb" if platform.machine() == self.name else "gdb-multiarch"

    def cross_prefix(self) -> str:
        """The CROSS_COMPILE prefix to build for this arch on this host ('' when native)."""
        return "" if platform.machine() == self.name else self.cross_compile


PROFILES = {
    "amd64": ArchProfile(
        name="x86_64", debian_arch="amd64", qemu="qemu-system-x86_64", machine="pc",
        cpu_tcg="max", cpu_kvm="host", console="ttyS0", append=("nopti",),
        gdb_arch="i386:x86-64", pc_register="rip", flags_register="eflags",
        host_machines=("x86_64",), cross_compile="x86_64-linux-gnu-", control_port="ttyS1",
    ),
    "i386": ArchProfile(
        name="i386", debian_arch="i386", qemu="qemu-system-i386", machine="pc",
        cpu_tcg="max", cpu_kvm="host", console="ttyS0", append=("nopti",),
        gdb_arch="i386", pc_register="eip", flags_register="eflags",
        host_machines=("x86_64", "i686"), cross_compile="i686-linux-gnu-", control_port="ttyS1",
    ),
    "arm64": ArchProfile(
        name="aarch64", debian_arch="arm64", qemu="qemu-system-aarch64", machine="virt",
        # plain `max` emulates the architected pointer-auth cipher: boots ≈3× slower
        cpu_tcg="max,pauth-impdef=on", cpu_kvm="host", console="ttyAMA0", append=("kpti=0",),
        gdb_arch="aarch64", pc_register="pc", flags_register="cpsr",
        host_machines=("aarch64",), pvpanic_device="pvpanic-pci", devices=("virtio-keyboard-pci",),
        image_kind="Image",
        kbuild_arch="arm64", cross_compile="aarch64-linux-gnu-",
        breakpoint_mechanism=Mechanism.BRK, has_optprobes=False, has_ftrace_probes=False,
    ),
}


def profile_for(debian_arch: str) -> ArchProfile:
    try:
        return PROFILES[debian_arch]
    except KeyError:
        raise ConfigError(f"guest architecture {debian_arch} is not supported yet "
                          f"(supported: {', '.join(PROFILES)})") from None


def image_problem(profile: ArchProfile, image) -> str | None:
    """Why ``image`` cannot be booted as this arch's kernel (None if it looks right).

    QEMU would otherwise start and the boot time out in silence.
    """
    with open(image, "rb") as f:
        head = f.read(0x210)
    if profile.image_kind == "bzImage":
        ok = head[0x202:0x206] == b"HdrS"
    elif profile.image_kind == "Image":  # arm64 boot header: magic "ARM\x64" at 0x38
        ok = head[0x38:0x3C] == b"ARM\x64"
    else:
        return None
    if ok:
        return None
    what = "gzip-compressed" if head[:2] == b"\x1f\x8b" else "not recognised"
    return (f"{image} is not an {profile.name} {profile.image_kind} ({what}); "
            f"QEMU's -kernel needs the {profile.image_kind} for {profile.debian_arch}")

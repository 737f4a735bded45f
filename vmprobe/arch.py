"""What differs per guest architecture: QEMU binary, machine, console, gdb names."""
from __future__ import annotations

import platform
from dataclasses import dataclass

from .errors import ConfigError


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
    gdb_arch: str
    pc_register: str
    flags_register: str
    host_machines: tuple[str, ...]  # platform.machine() values that can run it under KVM
    control_port: str | None = None  # guest tty of a second serial port (warm starts), if any

    @property
    def is_native(self) -> bool:
        return platform.machine() in self.host_machines


PROFILES = {
    "amd64": ArchProfile(
        name="x86_64", debian_arch="amd64", qemu="qemu-system-x86_64", machine="pc",
        cpu_tcg="max", cpu_kvm="host", console="ttyS0", append=("nopti",),
        gdb_arch="i386:x86-64", pc_register="rip", flags_register="eflags",
        host_machines=("x86_64",), control_port="ttyS1",
    ),
}


def profile_for(debian_arch: str) -> ArchProfile:
    try:
        return PROFILES[debian_arch]
    except KeyError:
        raise ConfigError(f"guest architecture {debian_arch} is not supported yet "
                          f"(supported: {', '.join(PROFILES)})") from None

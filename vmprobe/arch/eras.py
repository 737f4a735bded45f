"""Old-kernel boot quirks: one table keyed by kernel version range, like the arch profiles.

Each row says which kernels (``since`` ≤ version < ``until``) on which arches
need what changed in the QEMU or kernel command line, and why (measured on a
real 2.6.11 x86_64 under QEMU 7.2 TCG; see the README's "Old kernels").
:func:`boot_settings` folds the rows that apply into what ``qemu_command``
uses; :func:`diagnose_boot` names the likely cause of a boot that timed out.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from vmprobe.arch.profiles import ArchProfile
from vmprobe.errors import ConfigError

X86 = ("x86_64", "i386")


@dataclass(frozen=True)
class Quirk:
    name: str
    why: str
    until: tuple[int, ...] | None = None      # applies to versions below this
    since: tuple[int, ...] | None = None      # and at or above this
    arches: tuple[str, ...] = X86             # profile names
    cpu_tcg: str | None = None                # replaces the profile's TCG CPU
    panic: str | None = None                  # replaces panic=-1
    drop_append: tuple[str, ...] = ()         # profile extras the kernel does not know
    append: tuple[str, ...] = ()              # more kernel arguments
    nic: str | None = None                    # replaces virtio-net-pci
    userland: str | None = None               # the guest's userland (USERLANDS), instead of "modern"
    machine: str | None = None                # replaces the profile's QEMU machine

    def applies(self, profile: ArchProfile, version: tuple[int, ...] | None) -> bool:
        if profile.name not in self.arches or version is None:
            return False
        return ((self.until is None or version < self.until)
                and (self.since is None or version >= self.since))


QUIRKS: tuple[Quirk, ...] = (
    Quirk("i440fx-machine", until=(3, 0), machine="pc",
          why="the facts about 2.6 kernels were measured on i440FX (-M pc); q35's ICH9 and PCI Express "
              "config space are untried on them"),
    Quirk("intel-vendor-cpu", until=(3, 0), cpu_tcg="qemu64,vendor=GenuineIntel",
          why="QEMU adds an e820 reserved range near 1 TiB for AMD-vendor CPUs; 2.6.11 then dies "
              "early with 'Cannot find space for the kernel page tables' (kvm64 and core2duo work too)"),
    Quirk("panic-reboots-after-1s", until=(3, 0), panic="1",
          why="panic=-1 (reboot at once) is ignored by 2.6 kernels: panic=1 with -no-reboot ends QEMU"),
    Quirk("no-nopti", until=(4, 4), drop_append=("nopti",),
          why="no page-table isolation before 4.4.110/4.9.75/4.14.11/4.15: nothing to turn off "
              "(an unknown argument goes to init)"),
    Quirk("e1000-nic", until=(2, 6, 24), nic="e1000",
          why="virtio-net arrived in 2.6.24; e1000 is the NIC old kernels have a driver for"),
    Quirk("earlyprintk", until=(3, 0), append=("earlyprintk=serial,ttyS0,115200",),
          why="an early failure of an old kernel is otherwise silent: the console driver comes up late"),
    Quirk("musl-userland", until=(3, 2), userland="old",
          why="glibc's static start-up (Debian's busybox-static) refuses kernels before 3.2 with 'FATAL: "
              "kernel too old': the guest gets busybox built with musl, and commands go over the serial "
              "agent (dropbear is glibc-linked)"),
)

#: the guest userlands (guest/rootfs.py builds them): "modern" is Debian's glibc-static
#: busybox-static with dropbear for SSH; "old" is Debian's busybox source built statically
#: with musl (guest/musl_busybox.py), no SSH server: the serial transport
USERLANDS = ("modern", "old")


@dataclass(frozen=True)
class BootSettings:
    """The quirk-adjusted parts of a machine's command lines."""

    cpu_tcg: str
    machine: str
    panic: str = "-1"
    append: tuple[str, ...] = ()     # the profile's extras, then the quirks'
    nic: str = "virtio-net-pci"
    userland: str = "modern"
    quirks: tuple[str, ...] = field(default=())   # names of the rows applied


def kernel_version(release: str) -> tuple[int, ...] | None:
    """``2.6.11-smp`` → (2, 6, 11); ``6.1.0-57-cloud-amd64`` → (6, 1, 0); None if unreadable."""
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", release or "")
    if not m:
        return None
    return tuple(int(g) for g in m.groups() if g is not None)


def boot_settings(profile: ArchProfile, release: str) -> BootSettings:
    version = kernel_version(release)
    cpu, panic, nic, userland, machine = profile.cpu_tcg, "-1", "virtio-net-pci", "modern", profile.machine
    drop: set[str] = set()
    extra: list[str] = []
    applied = []
    for q in QUIRKS:
        if not q.applies(profile, version):
            continue
        applied.append(q.name)
        cpu = q.cpu_tcg or cpu
        panic = q.panic or panic
        nic = q.nic or nic
        userland = q.userland or userland
        machine = q.machine or machine
        drop.update(q.drop_append)
        extra.extend(q.append)
    append = tuple(a for a in profile.append if a not in drop) + tuple(extra)
    return BootSettings(cpu_tcg=cpu, machine=machine, panic=panic, append=append, nic=nic, userland=userland,
                        quirks=tuple(applied))


def guest_userland(profile: ArchProfile, release: str, requested: str = "auto") -> str:
    """The userland a guest of this kernel gets: ``requested`` unless it is ``auto``, else what
    the era table says (a release whose version cannot be read gets the modern one)."""
    if requested == "auto":
        return boot_settings(profile, release).userland
    if requested not in USERLANDS:
        raise ConfigError(f"unknown guest userland {requested!r} (choose from auto, {', '.join(USERLANDS)})")
    return requested


# what a console that stopped says → the likely cause (first match wins)
_CAUSES: tuple[tuple[str, str], ...] = (
    (r"Cannot find space for the kernel page tables",
     "an old kernel on an AMD-vendor CPU model (QEMU's e820 hole near 1 TiB): boot it with "
     "-cpu qemu64,vendor=GenuineIntel (vmprobe does for kernels before 3.0 whose version it can read)"),
    (r"FATAL: kernel too old",
     "the guest's userland (glibc-static busybox) refuses kernels older than 3.2: boot it with "
     "--userland old (busybox built with musl; chosen by itself when the kernel's version reads < 3.2)"),
    (r"Unable to mount root fs|No init found|No working init found|Failed to execute /init",
     "the kernel did not get vmprobe's initramfs: without CONFIG_BLK_DEV_INITRD it ignores -initrd "
     "(build the guest into the image: vmprobe rootfs export, CONFIG_INITRAMFS_SOURCE)"),
    (r"vmprobe-init: no eth0",
     "the guest has no network driver (virtio-net before 2.6.24, or not built): use --transport serial"),
    (r"VMPROBE-SNAPSHOT-POINT",
     "the guest waited for its warm-start line on the control port that never came"),
    (r"Freeing unused kernel (memory|image)|Run /init as init process",
     "the kernel handed over to /init, which never reached its READY marker: the userland does not "
     "run on this kernel, or a module it loads hangs (--verbose shows the console)"),
)


def diagnose_boot(console: str, profile: ArchProfile, release: str) -> str:
    """The likely cause of a boot that timed out, from what the console said (and did not)."""
    if not console.strip():
        settings = boot_settings(profile, release)
        hint = ("" if "earlyprintk" in " ".join(settings.append)
                else "; add --append earlyprintk=serial to see an early failure")
        return ("the console stayed empty: the kernel died before its console came up, or it has no "
                f"console on {profile.console} (CONFIG_SERIAL_8250_CONSOLE){hint}")
    for pattern, cause in _CAUSES:
        if re.search(pattern, console):
            return cause
    return ("the kernel was still booting when the time ran out: a loaded TCG host needs a longer "
            "--boot-timeout (--verbose shows how far it gets)")


# ---------------------------------------------------------------------------
# The kprobe API by era: what the fork probe (modules/templates/vmprobe_fork.c)
# probes and what the tool passes it. The template follows the same boundaries
# with LINUX_VERSION_CODE conditionals (tests/unit/test_fork_template_eras.py
# preprocesses it at each one).

@dataclass(frozen=True)
class ProbeEra:
    name: str
    why: str
    until: tuple[int, ...] | None = None
    since: tuple[int, ...] | None = None
    fork_symbol: str | None = None    # the kernel's central fork function in this range
    pass_address: bool = False        # the tool passes the function's address (addr=) to the module

    def covers(self, version: tuple[int, ...]) -> bool:
        return ((self.until is None or version < self.until)
                and (self.since is None or version >= self.since))


PROBE_ERAS: tuple[ProbeEra, ...] = (
    ProbeEra("do_fork", until=(4, 2), fork_symbol="do_fork",
             why="the article's fork function (2.6.8: do_fork, measured on 2.6.11's kallsyms too)"),
    ProbeEra("_do_fork", since=(4, 2), until=(5, 10), fork_symbol="_do_fork",
             why="renamed _do_fork in 4.2 when clone got its TLS argument in C"),
    ProbeEra("kernel_clone", since=(5, 10), fork_symbol="kernel_clone",
             why="renamed kernel_clone in 5.10 (cad6967ac108)"),
    ProbeEra("address-parameter", until=(2, 6, 33), pass_address=True,
             why="kallsyms_lookup_name is not exported before 2.6.33 (2.6.11 refuses the article's "
                 "module: 'Unknown symbol kallsyms_lookup_name') and struct kprobe has no symbol_name "
                 "before 2.6.19: the tool reads the address from /proc/kallsyms and passes addr="),
    ProbeEra("pt_regs-register-names", until=(2, 6, 25),
             why="x86 pt_regs fields had the registers' names (rip/eip, eflags) until the 2.6.25 "
                 "unification (ip, flags)"),
    ProbeEra("fault-handler", until=(5, 14),
             why="struct kprobe has a fault_handler until 5.14 (ec6aba3d2be1)"),
)


def probe_eras(release: str) -> tuple[ProbeEra, ...]:
    """The rows that apply to a kernel (none if its version cannot be read)."""
    version = kernel_version(release)
    return () if version is None else tuple(e for e in PROBE_ERAS if e.covers(version))


def era_fork_symbol(release: str) -> str | None:
    return next((e.fork_symbol for e in probe_eras(release) if e.fork_symbol), None)


def passes_address(release: str) -> bool:
    return any(e.pass_address for e in probe_eras(release))

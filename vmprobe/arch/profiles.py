"""The arch table: one :class:`ArchProfile` per guest architecture, holding every fact
that differs between them, so no other code needs to test an arch name."""
from __future__ import annotations

import platform
from dataclasses import dataclass

from vmprobe.arch.sites import Arm64Sites, Mechanism, SiteDecoder, X86Sites
from vmprobe.errors import ConfigError


@dataclass(frozen=True)
class ArchProfile:
    name: str                 # kernel/gdb name: x86_64, i386, aarch64
    debian_arch: str          # amd64, i386, arm64
    qemu: str                 # QEMU system binary
    machine: str              # QEMU -M (q35 on x86: its PCI interrupt links cost the guest's ACPI
                              # interpreter little; i440FX's LNKx took ≈0.35 s per virtio device under TCG)
    cpu_tcg: str
    cpu_kvm: str
    console: str              # kernel console device
    append: tuple[str, ...]   # command-line extras (e.g. so gdb can read kernel text)
    gdb_arch: str             # gdb's `set architecture` name
    pc_register: str          # gdb register names
    flags_register: str
    host_machines: tuple[str, ...]  # platform.machine() values that can run it under KVM
    sites: SiteDecoder        # reads the bytes at a probe site
    elf_machine: int          # ELF e_machine of its kernel, modules and programs
    multiarch: str            # Debian multiarch tuple: where the guest programs' libraries live
    assembler: tuple[str, ...]  # argv that assembles an object for it (gdb's kernel symbols)
    qemu_package: str         # the Debian package that has `qemu`
    tree_images: tuple[str, ...]  # where a kernel build tree keeps its image, best first
    aliases: tuple[str, ...] = ()    # more names a user may call it (markers), beyond name and debian_arch
    bits: int = 64                   # word size
    pvpanic_device: str = "pvpanic"  # ISA on pc; PCI on virt
    devices: tuple[str, ...] = ()    # extra -device's (virt has no PS/2 keyboard for QMP send-key)
    image_kind: str = "bzImage"      # what QEMU's -kernel gets (and kbuild's target): bzImage, or arm64's Image
    kernel_build_arch: str = ""      # ARCH= to build its kernel from source ("" = `kernels build` cannot yet)
    kbuild_arch: str = ""            # ARCH= for kbuild ("" when the headers' own ARCH is right)
    cross_compile: str = ""          # CROSS_COMPILE= prefix (binutils and CC) for module builds
    breakpoint_mechanism: Mechanism = Mechanism.INT3   # what a plain kprobe writes at its site
    has_optprobes: bool = True           # jump-optimized probes exist on this arch
    has_ftrace_probes: bool = True       # probes on the fentry site ride ftrace
    control_port: str | None = None  # guest tty of the control port (warm starts, the serial agent), if any
    #: None: the control port is a second UART (-serial); else the virtio-serial controller a
    #: virtio console hangs on (arm64's virt machine has one UART: the port is hvc0 there)
    control_bus: str | None = None
    #: C compilers (first found wins) and flags for a static, libc-free guest program (vmprobe-insmod)
    static_cc: tuple[str, ...] = ("gcc", "gcc-12")
    static_cflags: tuple[str, ...] = ()
    percpu_base_register: str = ""  # gdb register holding the per-CPU base in the kernel ("" = unknown)
    current_register: str = ""      # gdb register holding the current task itself in the kernel (arm64's SP_EL0)
    current_reader: str = ""        # a function whose first per-CPU load reads current (no BTF/kallsyms for it)
    config_symbol: str = ""          # the Kconfig symbol a kernel .config of this arch sets
    old_arch_dir: str = ""           # its arch/ dir in 2.6-era trees (before the x86 merge), if any
    code_model_cflags: tuple[str, ...] = ()   # what an old tree's module build must add for the code model
    plt32_since: tuple[int, ...] | None = None  # first kernel whose module loader takes R_*_PLT32
    return_register: str = ""        # gdb's name of the register a function returns its value in
    argument_register: str = ""      # gdb's name of the register a kernel function gets its first argument in
    syscall_prefix: str = ""         # the arch's syscall wrapper prefix in kallsyms (4.17+ x86, arm64)

    @property
    def is_native(self) -> bool:
        return platform.machine() in self.host_machines

    @property
    def gdb_binary(self) -> str:
        """``gdb`` for the host's own architecture, ``gdb-multiarch`` for any other."""
        return "gdb" if platform.machine() == self.name else "gdb-multiarch"

    @property
    def names(self) -> tuple[str, ...]:
        """Every name it goes by, once each: the kernel's, Debian's, then the aliases."""
        return tuple(dict.fromkeys((self.name, self.debian_arch, *self.aliases)))

    def cross_prefix(self) -> str:
        """The CROSS_COMPILE prefix to build for this arch on this host ('' when native)."""
        return "" if platform.machine() == self.name else self.cross_compile


PROFILES = {
    "amd64": ArchProfile(
        name="x86_64", debian_arch="amd64", qemu="qemu-system-x86_64", machine="q35",
        cpu_tcg="max", cpu_kvm="host", console="ttyS0", append=("nopti",),
        gdb_arch="i386:x86-64", pc_register="rip", flags_register="eflags", percpu_base_register="gs_base",
        config_symbol="CONFIG_X86_64", old_arch_dir="x86_64", code_model_cflags=("-mcmodel=kernel",),
        plt32_since=(4, 16),
        host_machines=("x86_64",), cross_compile="x86_64-linux-gnu-", control_port="ttyS1",
        sites=X86Sites(bits=64), elf_machine=62, multiarch="x86_64-linux-gnu",
        assembler=("as", "--64"), qemu_package="qemu-system-x86",
        tree_images=("arch/x86/boot/bzImage",), kernel_build_arch="x86_64", aliases=("x86-64", "x64"),
        return_register="rax", argument_register="rdi", syscall_prefix="__x64_sys_",
    ),
    "i386": ArchProfile(
        name="i386", debian_arch="i386", qemu="qemu-system-i386", machine="q35",
        cpu_tcg="max", cpu_kvm="host", console="ttyS0", append=("nopti",),
        gdb_arch="i386", pc_register="eip", flags_register="eflags",
        host_machines=("x86_64", "i686"), cross_compile="i686-linux-gnu-", control_port="ttyS1",
        sites=X86Sites(bits=32), elf_machine=3, multiarch="i386-linux-gnu", bits=32, static_cflags=("-m32",),
        config_symbol="CONFIG_X86_32", old_arch_dir="i386", code_model_cflags=("-m32",), plt32_since=(5, 12),
        assembler=("as", "--32"), qemu_package="qemu-system-x86",
        tree_images=("arch/x86/boot/bzImage",), aliases=("i686", "x86_32"),
        return_register="eax", argument_register="eax", syscall_prefix="__ia32_sys_",  # -mregparm=3
        percpu_base_register="fs_base", current_reader="__ia32_sys_getpid",
    ),
    "arm64": ArchProfile(
        name="aarch64", debian_arch="arm64", qemu="qemu-system-aarch64", machine="virt",
        # plain `max` emulates the architected pointer-auth cipher: boots ≈3× slower
        cpu_tcg="max,pauth-impdef=on", cpu_kvm="host", console="ttyAMA0", append=("kpti=0",),
        gdb_arch="aarch64", pc_register="pc", flags_register="cpsr",
        host_machines=("aarch64",), pvpanic_device="pvpanic-pci", devices=("virtio-keyboard-pci",),
        image_kind="Image", control_port="hvc0", control_bus="virtio-serial-pci",
        kbuild_arch="arm64", cross_compile="aarch64-linux-gnu-",
        static_cc=("aarch64-linux-gnu-gcc", "aarch64-linux-gnu-gcc-12"), config_symbol="CONFIG_ARM64",
        breakpoint_mechanism=Mechanism.BRK, has_optprobes=False, has_ftrace_probes=False,
        sites=Arm64Sites(), elf_machine=183, multiarch="aarch64-linux-gnu",
        assembler=("aarch64-linux-gnu-as",), qemu_package="qemu-system-arm",
        tree_images=("arch/arm64/boot/Image", "arch/arm64/boot/Image.gz"),
        return_register="x0", argument_register="x0", syscall_prefix="__arm64_sys_", current_register="SP_EL0",
    ),
}


def profile_for(debian_arch: str) -> ArchProfile:
    try:
        return PROFILES[debian_arch]
    except KeyError:
        raise ConfigError(f"guest architecture {debian_arch} is not supported yet "
                          f"(supported: {', '.join(PROFILES)})") from None


def profile_by_name(name: str) -> ArchProfile | None:
    """The profile a user's name for an arch means (``x86_64``, ``amd64``, ``x64``, ``i686`` …,
    any case); None for an arch vmprobe does not know."""
    wanted = name.lower()
    return next((p for p in PROFILES.values() if wanted in (n.lower() for n in p.names)), None)


def profile_where(**facts) -> ArchProfile | None:
    """The one profile with these field values (None if none or several): maps what a file
    says (an ELF e_machine, an image kind and word size, a QEMU binary) to its arch."""
    found = [p for p in PROFILES.values() if all(getattr(p, k) == v for k, v in facts.items())]
    return found[0] if len(found) == 1 else None


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

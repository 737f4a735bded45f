"""``vmprobe gdb``: an interactive (or scripted) gdb on a booted guest, with symbols.

Kernel symbols come, by default, from the guest's own ``/proc/kallsyms``: those
are runtime addresses, so KASLR is already applied. They are turned into a
small ELF object gdb can load (an assembler file of labels in a ``@nobits``
section spanning ``_text`` … ``_end``, assembled with ``as``): function and
object types and sizes included, no file contents. With ``vmlinux_dbg``, the
``-dbg`` package's vmlinux (full DWARF) is fetched and loaded at the KASLR
offset, i.e. ``_text`` in kallsyms minus ``_text`` in the ELF.

A module's symbols are loaded from its ``.ko`` at the addresses the kernel
gave its sections (``/sys/module/<m>/sections/*``).

gdb runs as a child that dies with us (PR_SET_PDEATHSIG); once it exits the
guest is resumed through QMP if gdb left it stopped, so the machine is never
left frozen (it is shut down by its ``with`` block as usual).
"""
from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from vmprobe.arch import ArchProfile
from vmprobe.check.loading import load_once
from vmprobe.errors import ConfigError, GdbError, ModuleLoadError
from vmprobe.formats.elf import section_names
from vmprobe.host.processes import die_with_parent
from vmprobe.modules import Module
from vmprobe.vm.machine import Machine

SECTION = ".kallsyms"
#: kallsyms types of code; everything else is data
TEXT_TYPES = set("tTwW")
#: module sections the kernel reports but gdb cannot place (the kernel's copy of the symtab)
SKIP_SECTIONS = (".text", ".symtab", ".strtab")
GDB_TIMEOUT = 300


@dataclass(frozen=True)
class KSym:
    address: int
    type: str
    name: str


def parse_kallsyms(text: str) -> list[KSym]:
    """The core kernel's symbols (``[module]`` ones are left to the modules' .ko files)."""
    out = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) != 3:
            continue
        try:
            address = int(fields[0], 16)
        except ValueError:
            continue
        out.append(KSym(address, fields[1], fields[2]))
    return out


def kernel_span(symbols: list[KSym]) -> tuple[int, int]:
    """[start, end) of the kernel image: ``_text`` … ``_end`` (per-CPU offsets near 0 and
    anything outside the image are not addresses gdb should map)."""
    by_name = {s.name: s.address for s in symbols}
    start = by_name.get("_text") or by_name.get("_stext")
    end = by_name.get("_end")
    if not start or not end or end <= start:
        addrs = [s.address for s in symbols if s.address]
        if not addrs:
            raise GdbError("/proc/kallsyms lists no addresses (kptr_restrict? not root?)")
        start, end = min(addrs), max(addrs) + 1
    return start, end


def kallsyms_assembly(symbols: list[KSym]) -> tuple[str, int]:
    """Assembler text for the symbols (labels in a nobits section) and the section's address."""
    start, end = kernel_span(symbols)
    inside = sorted({(s.address, s.name): s for s in symbols if start <= s.address < end}.values(),
                    key=lambda s: (s.address, s.name))
    # where each symbol ends: the next higher address (one pass from the end)
    following, nxt = [0] * len(inside), end
    for i in range(len(inside) - 1, -1, -1):
        following[i] = nxt
        if i and inside[i - 1].address < inside[i].address:
            nxt = inside[i].address
    seen: dict[str, int] = {}
    lines = [f'.section {SECTION},"awx",@nobits']
    for i, sym in enumerate(inside):
        count = seen.get(sym.name, 0) + 1
        seen[sym.name] = count
        name = sym.name if count == 1 else f"{sym.name}.dup{count}"   # a static name used twice
        quoted = '"' + name.replace('"', "") + '"'
        kind = "%function" if sym.type in TEXT_TYPES else "%object"
        lines.append(f".org {sym.address - start:#x}")
        lines.append(f".type {quoted}, {kind}")
        lines.append(f".size {quoted}, {following[i] - sym.address:#x}")
        if sym.type.isupper():
            lines.append(f".globl {quoted}")
        lines.append(f"{quoted}:")
    lines.append(f".org {end - start:#x}")
    return "\n".join(lines) + "\n", start


def kallsyms_object(symbols: list[KSym], profile: ArchProfile, out: Path) -> int:
    """Assemble the symbols into ``out`` (an ELF object for the guest's arch); returns the
    section's address."""
    asm, base = kallsyms_assembly(symbols)
    tool = profile.assembler
    if not tool:
        raise ConfigError(f"no assembler known for {profile.name} guests")
    if not shutil.which(tool[0]):
        raise ConfigError(f"{tool[0]} not found: install binutils (needed for kernel symbols in gdb)")
    src = out.with_suffix(".s")
    src.write_text(asm)
    proc = subprocess.run([*tool, "-o", str(out), str(src)], capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)
    src.unlink()
    if proc.returncode != 0:
        raise GdbError(f"assembling the kernel's symbols failed: {proc.stderr.strip()[-500:]}")
    return base


def module_sections(machine: Machine, name: str) -> dict[str, int]:
    """Section name → load address of a loaded module, from /sys/module/<name>/sections."""
    d = f"/sys/module/{name}/sections"
    res = machine.run(f'for f in {d}/.[!.]* {d}/*; do [ -f "$f" ] && echo "${{f##*/}} $(cat "$f")"; '
                      f'done; true', 30)
    sections = {}
    for line in res.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and re.fullmatch(r"0x[0-9a-f]+", parts[1]):
            sections[parts[0]] = int(parts[1], 16)
    if ".text" not in sections:
        raise ModuleLoadError(f"module {name} is not loaded (no {d}/.text in the guest)")
    return sections


def module_symbol_command(ko: Path, sections: dict[str, int]) -> str:
    """``add-symbol-file`` for a module at its load addresses (sections the .ko has)."""
    from vmprobe.formats.elf import read_module
    present = set(section_names(read_module(ko)))
    args = [f"add-symbol-file {ko} {sections['.text']:#x}"]
    args += [f"-s {name} {addr:#x}" for name, addr in sorted(sections.items())
             if name not in SKIP_SECTIONS and name in present and addr]
    return " ".join(args)


def vmlinux_offset(vmlinux: Path, runtime_text: int) -> int:
    """The KASLR slide: ``_text`` at run time minus ``_text`` in the ELF."""
    proc = subprocess.run(["nm", "-P", str(vmlinux)], capture_output=True, text=True, timeout=300)
    m = re.search(r"^_text [tT] ([0-9a-f]+)", proc.stdout, re.M)
    if not m:
        raise GdbError(f"{vmlinux} has no _text symbol (nm: {proc.stderr.strip()[:200]})")
    return runtime_text - int(m[1], 16)


@dataclass
class Session:
    """What gdb is told before the user's commands; built by :func:`prepare`."""
    machine: Machine
    script: Path
    commands: list[str] = field(default_factory=list)
    kernel_symbols: int = 0
    text: int = 0
    module_text: int | None = None
    kaslr_offset: int | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def gdb_binary(self) -> str:
        """The host's gdb for guests the host runs natively (x86_64 covers i386); gdb-multiarch
        for others (when installed)."""
        native = self.machine.profile.is_native
        return "gdb" if native or not shutil.which("gdb-multiarch") else "gdb-multiarch"

    def gdb_command(self, binary: str | None = None) -> list[str]:
        return [binary or self.gdb_binary, "--nx", "--quiet", "-x", str(self.script)]


def prepare(machine: Machine, module: Module | None = None, vmlinux: Path | None = None,
            log=None) -> Session:
    """Read the guest's symbols and write a gdb script (in the machine's dir) that attaches
    and loads them. The module, if any, must be loaded already."""
    import time
    log = log or (lambda msg: None)
    t0 = time.monotonic()
    saved = machine.saved_kallsyms()  # a warm machine's: its snapshot's copy (same layout)
    text = saved.read_text(errors="replace") if saved else machine.run("cat /proc/kallsyms", 120).stdout
    symbols = parse_kallsyms(text)
    runtime_text = next((s.address for s in symbols if s.name == "_text"), 0)
    t1 = time.monotonic()
    cmds = ["set pagination off", "set confirm off", f"set architecture {machine.profile.gdb_arch}",
            f"target remote {machine.gdb_socket}"]
    session = Session(machine, machine.workdir / "vmprobe.gdb", text=runtime_text)
    if vmlinux:
        offset = vmlinux_offset(vmlinux, runtime_text)
        session.kaslr_offset = offset
        cmds.append(f"symbol-file -o {offset:#x} {vmlinux}")
        log(f"vmprobe: kernel symbols from {vmlinux} (KASLR offset {offset:#x})")
    else:
        obj = machine.workdir / "kallsyms.o"
        base = kallsyms_object(symbols, machine.profile, obj)
        session.kernel_symbols = len(symbols)
        cmds.append(f"add-symbol-file {obj} -s {SECTION} {base:#x}")
        t2 = time.monotonic()
        log(f"vmprobe: {len(symbols)} kernel symbols from /proc/kallsyms (runtime addresses; "
            f"read in {t1 - t0:.1f}s, assembled in {t2 - t1:.1f}s)")
    t2 = time.monotonic()
    if module:
        sections = module_sections(machine, module.name)
        session.module_text = sections[".text"]
        cmds.append(module_symbol_command(module.path, sections))
        log(f"vmprobe: {module.name} symbols at .text {sections['.text']:#x}")
    cmds.append("set confirm on")
    session.commands = cmds
    session.script.write_text("\n".join(cmds) + "\n")
    session.timings = {"kallsyms": t1 - t0, "symbols": t2 - t1, "module": time.monotonic() - t2}
    return session


def resume_guest(machine: Machine) -> bool:
    """Resume the guest if gdb left it stopped; True if it had to."""
    try:
        status = machine.qmp.cmd("query-status")["status"]
    except Exception as exc:  # noqa: BLE001 - QMP gone means QEMU is gone
        raise GdbError(f"cannot ask QEMU whether the guest runs after gdb: {exc}") from None
    if status in ("debug", "paused"):
        machine.qmp.cmd("cont")
        return True
    return False


def run_gdb(session: Session, *, batch: bool = False, commands: list[str] = (),
            timeout: float = GDB_TIMEOUT, stdout=None, gdb_binary: str | None = None) -> int:
    """Run gdb on the session: interactive on this terminal, or ``batch`` with ``commands``
    (then detached). Returns gdb's exit status; the guest runs afterwards."""
    gdb_binary = gdb_binary or session.gdb_binary
    return run_gdb_command(session.gdb_command(gdb_binary), lambda: resume_guest(session.machine),
                           batch=batch, commands=commands, timeout=timeout, stdout=stdout)


def run_gdb_command(cmd: list[str], resume, *, batch: bool = False, commands: list[str] = (),
                    timeout: float = GDB_TIMEOUT, stdout=None) -> int:
    """Run gdb (``cmd``: binary, options, ``-x SCRIPT``); ``resume()`` afterwards, however it
    ended, so the guest is not left stopped. Also for a live VM's gdb (``gdb --on``), whose
    machine is in the supervisor: there ``resume`` tells the supervisor."""
    if not shutil.which(cmd[0]):
        raise ConfigError(f"{cmd[0]} not found: install gdb (gdb-multiarch for foreign guests)")
    cmd = list(cmd)
    if batch:
        cmd.insert(1, "--batch")
        for c in [*commands, "detach"]:
            cmd += ["-ex", c]
    else:
        for c in commands:
            cmd += ["-ex", c]
    # Interactive: Ctrl-C belongs to gdb (it interrupts the guest), not to us.
    old = signal.signal(signal.SIGINT, signal.SIG_IGN) if not batch else None
    proc = None
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL if batch else None,
                                stdout=stdout, stderr=subprocess.STDOUT if stdout else None,
                                preexec_fn=_gdb_child(batch))
        try:
            status = proc.wait(timeout if batch else None)
        except subprocess.TimeoutExpired:
            raise GdbError(f"gdb did not finish its batch commands within {timeout:.0f}s: "
                           f"{shlex.join(cmd)}") from None
    except BaseException:
        with contextlib.suppress(Exception):  # the first error is the one to report
            resume()
        raise
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(5)
        if old is not None:
            signal.signal(signal.SIGINT, old)
    resume()
    return status


def _gdb_child(batch: bool):
    def setup() -> None:
        die_with_parent()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if batch:
            os.setpgrp()  # a script's gdb is not on the terminal: keep it out of its signals
    return setup


def hint(session: Session) -> str:
    """How to attach from another terminal while the machine is up."""
    return f"{session.gdb_binary} --nx -q -x {session.script}"


__all__ = ["KSym", "Session", "kallsyms_assembly", "kallsyms_object", "module_sections",
           "module_symbol_command", "parse_kallsyms", "prepare", "resume_guest", "run_gdb",
           "run_gdb_command"]


# --------------------------------------------------------------------------
# the -dbg package's vmlinux

def dbg_packages(kernel) -> list[str]:
    return [f"linux-image-{kernel.release}-dbg", f"linux-image-{kernel.release}-unsigned-dbg"]


def fetch_vmlinux_dbg(kernel, log=None) -> Path:
    """The kernel's vmlinux with DWARF, from its ``-dbg`` package (260–800 MB download),
    cached as ``dbg/<release>-<version>/vmlinux``; only that one file is extracted."""
    from vmprobe.config import cache_dir
    from vmprobe.errors import FetchError
    from vmprobe.host import cache
    from vmprobe.kernels import parse_spec
    from vmprobe.kernels.catalog import load_catalog
    from vmprobe.kernels.debian import DebianProvider

    log = log or (lambda msg: None)
    target = cache_dir("dbg") / f"{kernel.release}-{kernel.version}"
    vmlinux = target / "vmlinux"
    if vmlinux.exists():
        return vmlinux
    catalog = load_catalog()
    spec = parse_spec(kernel.spec, catalog)
    provider = DebianProvider(catalog)
    apt = provider.apt(catalog.suites[spec.suite], kernel.arch)
    apt.update(24)
    stanza = next((s for name in dbg_packages(kernel) for s in apt.show(name)
                   if s["Version"] == kernel.version), None)
    if stanza is None:
        raise FetchError(f"no debug package for {kernel.release} {kernel.version} in the archive "
                         f"(looked for {' or '.join(dbg_packages(kernel))})")
    with cache.locked(target):
        if vmlinux.exists():
            return vmlinux
        size = int(stanza.get("Size", 0)) >> 20
        log(f"vmprobe: fetching {stanza['Package']}={kernel.version} ({size} MB) for its vmlinux")
        with cache.staging(target) as tmp:
            apt.download([f"{stanza['Package']}={kernel.version}"], tmp)
            deb = next(tmp.glob("*.deb"))
            digest = cache.sha256_file(deb)
            if stanza.get("SHA256") and digest != stanza["SHA256"]:
                raise FetchError(f"{deb.name}: sha256 {digest} does not match the archive's")
            member = f"./usr/lib/debug/boot/vmlinux-{kernel.release}"
            tar = subprocess.run(f"dpkg-deb --fsys-tarfile {shlex.quote(str(deb))} | "
                                 f"tar -x -C {shlex.quote(str(tmp))} {shlex.quote(member)}",
                                 shell=True, capture_output=True, text=True, timeout=1200)
            if tar.returncode != 0:
                raise FetchError(f"extracting {member} from {deb.name} failed: {tar.stderr.strip()[-300:]}")
            (tmp / member).rename(tmp / "vmlinux")
            shutil.rmtree(tmp / "usr")
            deb.unlink()
    return vmlinux


# --------------------------------------------------------------------------
# the command

def load_module(machine: Machine, module: Module, params: str = "") -> None:
    load = load_once(machine, module.path, params)
    if not load.ok:
        raise ModuleLoadError(f"loading {module.path.name} failed: {load.said()}",
                              detail=machine.console.tail(15))


def command(args, make_machine, log) -> int:
    """``vmprobe gdb``: boot, load the module, attach gdb with symbols, stop the VM after."""
    from vmprobe import modules
    from vmprobe.kernels import get_kernel

    kernel = get_kernel(args.kernel, log=log)
    module = modules.build(args.module, kernel, log=log)[0] if args.module else None
    vmlinux = fetch_vmlinux_dbg(kernel, log) if args.vmlinux_dbg else None
    machine = make_machine(kernel)
    with machine:
        if module:
            params = args.module_params
            if args.module == modules.FORK_PROBE and not params:
                params = "nonce=gdb"
            load_module(machine, module, params)
        session = prepare(machine, module, vmlinux, log)
        if not args.batch:
            log(f"vmprobe: {kernel.release} is up and stopped under gdb: 'continue' runs it, "
                f"Ctrl-C stops it, 'quit' ends gdb and the VM")
        return run_gdb(session, batch=args.batch, commands=args.ex, timeout=args.timeout)

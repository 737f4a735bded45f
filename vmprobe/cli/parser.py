"""The command line's grammar: every subcommand, option and help text (no VM code imported)."""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from vmprobe.config import DEFAULT_SPEC
from vmprobe.errors import EXIT_CODES
from vmprobe.runs.live_commands import add_up_down_ls, dry_run_arg, files_args, on_arg

if TYPE_CHECKING:
    pass

# The VM machinery (paramiko, QMP, kernels, modules) is imported by the commands that use
# it: `exec --on`/`shell --on` talk to a live VM's supervisor and need none of it.
ACCEL_CHOICES = ("auto", "kvm", "tcg")   # vmprobe.vm.accel.CHOICES (tests/unit/test_live_wire.py)

AFTER_ENTRY = "after-entry"              # vmprobe.check.probe.AFTER_ENTRY (likewise)
TRANSPORTS = ("auto", "ssh", "serial")   # vmprobe.vm.transport.TRANSPORTS (likewise)
MECHANISMS = ("int3", "optimized", "ftrace", "brk")   # the armed vmprobe.arch.Mechanism values (likewise)
USERLANDS = ("auto", "modern", "old")    # "auto" + vmprobe.arch.eras.USERLANDS (likewise)
#: the subcommands (build_parser(only=…) builds one of them)
COMMANDS = ("kernels", "exec", "shell", "rootfs", "up", "down", "ls", "probe", "gdb", "repro", "matrix", "doctor")

def _offset(text: str) -> int | str:
    if text == AFTER_ENTRY:
        return text
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an offset (an integer or {AFTER_ENTRY}): {text!r}") from None

def _regex(text: str) -> str:
    import re
    try:
        re.compile(text)
    except re.error as exc:
        raise argparse.ArgumentTypeError(f"not a regular expression ({exc}): {text!r}") from None
    return text


def _machine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kernel", "-k", default=DEFAULT_SPEC,
                   help=f"kernel spec, e.g. debian:bookworm, debian:bookworm/cloud-amd64@6.1.0-56, "
                        f"local:PATH[?build=DIR], built:<key> (default {DEFAULT_SPEC})")
    p.add_argument("--accel", choices=ACCEL_CHOICES, default=os.environ.get("VMPROBE_ACCEL", "auto"),
                   help="kvm, tcg, or auto: KVM only if a real test boot works (default auto)")
    p.add_argument("--smp", type=int, default=None,
                   help="guest CPUs (default 1: fastest under TCG; --scenario smp: 2)")
    p.add_argument("--verbose", "-v", action="store_true",
                   help="stream the guest's serial console to stderr while the command runs")
    p.add_argument("--memory", default="1G", help="guest memory (default 1G)")
    p.add_argument("--boot-timeout", type=float, default=120, help="seconds to reach READY (default 120)")
    p.add_argument("--append", action="append", default=[], help="extra kernel command-line argument")
    p.add_argument("--console-log", type=Path, help="save the guest's serial console to this file")
    _transport_arg(p)
    _userland_arg(p)
    _cold_arg(p)


def _transport_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--transport", choices=TRANSPORTS, default=os.environ.get("VMPROBE_TRANSPORT", "auto"),
                   help="how commands reach the guest: ssh, serial (the serial agent on a second port: "
                        "no network needed), or auto: SSH when the guest runs it (default)")


def _userland_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--userland", choices=USERLANDS, default=os.environ.get("VMPROBE_USERLAND", "auto"),
                   help="the guest's programs: modern (Debian's busybox-static and dropbear), old (Debian's "
                        "busybox built with musl, for kernels before 3.2 that glibc refuses; no SSH: "
                        "commands go over the serial agent), or auto: by the kernel's version "
                        "(default $VMPROBE_USERLAND, else auto)")


def _cold_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cold", action="store_true", default=bool(os.environ.get("VMPROBE_COLD")),
                   help="boot the kernel instead of restoring the saved warm-start state (fresh "
                        "KASLR layout and RNG; default $VMPROBE_COLD, else warm)")

def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole grammar, or (``only``) the top level and that one subcommand: a command
    imports only what its own options need (``probe --on`` no VM code, ``exec`` no matrix)."""
    codes = "\n".join(f"  {code:>3}  {name}" for name, code in sorted(EXIT_CODES.items(), key=lambda x: x[1]))
    parser = argparse.ArgumentParser(
        prog="vmprobe", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Test Linux kprobe modules against real kernels in QEMU.",
        epilog=f"exit codes of vmprobe's own failures:\n{codes}\n  130  interrupted\n"
               f"(`vmprobe exec` otherwise exits with the guest command's status)")
    sub = parser.add_subparsers(dest="command", required=True)

    def want(*names: str) -> bool:
        return only is None or only in names

    if want("kernels"):
        kernels = sub.add_parser("kernels", help="list or fetch kernels")
        ksub = kernels.add_subparsers(dest="kernels_command", required=True)
        kl = ksub.add_parser("list", help="the catalog and what is cached")
        kl.add_argument("--json", action="store_true")
        kf = ksub.add_parser("fetch", help="download a kernel into the cache")
        kf.add_argument("spec", nargs="?", default=DEFAULT_SPEC)
        kf.add_argument("--refresh", action="store_true", help="refresh the archive's package lists first")
        from vmprobe.kernels.build import add_build_arguments
        add_build_arguments(ksub)

    if want("exec"):
        ex = sub.add_parser("exec", help="boot a kernel, run a command in it, exit with its status")
        _machine_args(ex)
        ex.add_argument("--timeout", type=float, default=600, help="seconds the command may run (default 600)")
        on_arg(ex)
        files_args(ex)
        dry_run_arg(ex)
        ex.add_argument("cmd", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS…]")

    if want("shell"):
        sh = sub.add_parser("shell", help="boot a kernel and open an interactive shell in it")
        _machine_args(sh)
        on_arg(sh)
        files_args(sh)
        dry_run_arg(sh)

    if want("rootfs"):
        rf = sub.add_parser("rootfs", help="the guest image vmprobe boots")
        rsub = rf.add_subparsers(dest="rootfs_command", required=True)
        rx = rsub.add_parser("export", help="write the guest for a kernel, to build into it (CONFIG_INITRAMFS_SOURCE)",
                             description="Writes the initramfs vmprobe would boot for the kernel, as a newc "
                                         "cpio archive (gzipped if FILE ends in .gz), for a kernel without "
                                         "initrd support: build it in with CONFIG_INITRAMFS_SOURCE=FILE. It "
                                         "holds no per-run secret: the guest waits on its control port "
                                         "(ttyS1) for the run's keys and nonce.")
        rx.add_argument("--kernel", "-k", default=DEFAULT_SPEC, help="kernel spec (its modules and version)")
        rx.add_argument("--output", "-o", type=Path, required=True, metavar="FILE.cpio", help="where to write it")
        _userland_arg(rx)

    if want("up", "down", "ls"):
        add_up_down_ls(sub, _machine_args)

    if want("probe"):
        pr = sub.add_parser("probe", help="arm a kprobe in a VM and verify it end to end")
        _machine_args(pr)
        pr.add_argument("--symbol", help="function to probe (default: the kernel's fork function); with "
                                         "--module: a probe there must be among those the module registers")
        pr.add_argument("--offset", type=_offset, default=None,
                        help="offset into the function, or after-entry: past ENDBR and the fentry site "
                             "(default 0; with --module and --symbol: any offset)")
        pr.add_argument("--min-hits", type=int, default=1,
                        help="fail a probe whose handlers ran fewer times while the trigger ran (default 1)")
        pr.add_argument("--no-post-handler", dest="post_handler", action="store_false",
                        help="no post handler (lets x86 optimize the probe into a jump)")
        pr.add_argument("--module", type=Path,
                        help="your own module: a .c file, a directory with a Kbuild, or a built .ko")
        pr.add_argument("--module-params", default="", help="parameters for insmod of --module")
        pr.add_argument("--trigger", help="command that makes the probe fire (default: forks)")
        pr.add_argument("--no-sysrq", dest="sysrq", action="store_false", help="skip the SysRq checks")
        pr.add_argument("--expect-mechanism", choices=MECHANISMS,
                        help="fail unless the probe is armed this way")
        pr.add_argument("--json", type=Path, help="write the report as JSON here")
        on_arg(pr)
        pr.add_argument("--watch", action="store_true",
                        help="with --on: rebuild and check again whenever the module's source changes")
        dry_run_arg(pr)
        from vmprobe.check.scenarios import NAMES as SCENARIO_NAMES
        pr.add_argument("--scenario", choices=SCENARIO_NAMES, default="fork",
                        help="a built-in scenario (default fork: the probe check); the others prove the "
                             "article's claims (modify-register, modify-data, fault-handler, smp)")
        pr.add_argument("--repeat", type=int, default=1, metavar="N",
                        help="N load → trigger → unload cycles on one VM, each verified, memory read after "
                             "each, with a leak verdict (default 1)")
        pr.add_argument("--leak-threshold", type=float, default=None, metavar="KIB",
                        help="--repeat: a leak is unreclaimable slab growing faster than this many KiB per "
                             "cycle (default 16)")
        pr.add_argument("--allow-splat", action="append", default=[], metavar="REGEX", type=_regex,
                        help="a splat (WARNING, lockdep, KASAN… the kernel lived on after) whose title "
                             "matches REGEX does not fail the check (repeatable)")

    if want("gdb"):
        from vmprobe.modules import FORK_PROBE
        gd = sub.add_parser("gdb", help="boot a kernel and attach gdb to it, with its symbols",
                            description="gdb on the guest's gdbstub, with the kernel's symbols (from its "
                                        "/proc/kallsyms, or the -dbg package's vmlinux) and a module's at "
                                        "its load address. The VM stops when gdb exits.")
        _machine_args(gd)
        gd.add_argument("--module", nargs="?", type=Path, const=FORK_PROBE,
                        help="load this module (.c, Kbuild dir or .ko; alone: the built-in fork probe) "
                             "and its symbols")
        gd.add_argument("--module-params", default="", help="parameters for insmod of --module")
        gd.add_argument("--vmlinux-dbg", action="store_true",
                        help="symbols and DWARF from the -dbg package's vmlinux (a 260-800 MB download, cached)")
        gd.add_argument("--batch", action="store_true", help="run the -ex commands, print, detach, exit")
        gd.add_argument("-ex", dest="ex", action="append", default=[], metavar="CMD",
                        help="a gdb command to run after attaching (repeatable)")
        gd.add_argument("--timeout", type=float, default=300, help="seconds a --batch gdb may run (default 300)")
        on_arg(gd)

    if want("repro"):
        rp = sub.add_parser("repro", help="re-run the failed checks of a probe or matrix JSON report",
                            description="Boots the report's kernel, builds its module and runs the same "
                                        "check with the same options and accelerator; says whether the "
                                        "failure came back and exits with the check's status.")
        rp.add_argument("report", type=Path, help="REPORT.json from vmprobe probe/matrix --json")
        rp.add_argument("--keep", action=argparse.BooleanOptionalAction, default=None,
                        help="keep the VM up afterwards: a shell, and how to attach gdb (default: on a terminal)")
        rp.add_argument("--all", action="store_true", help="re-run passing checks too")
        rp.add_argument("--check", help="only the checks whose label contains this (e.g. 'bookworm int3')")
        rp.add_argument("--accel", choices=ACCEL_CHOICES, default=None,
                        help="override the report's accelerator")
        rp.add_argument("--module", type=Path, help="the module source, if it moved since the report")

    if want("matrix"):
        from vmprobe.check.run import CHECK_NAMES
        from vmprobe.runs.matrix import KERNEL_TIMEOUT
        mx = sub.add_parser("matrix", help="the probe checks on several kernels, in parallel",
                            description="For each kernel: one VM, the probe checks (entry: ftrace at "
                                        "the entry; int3: the next instruction with a post handler; "
                                        "optimized: the same without one). Exits 0 only if all pass.")
        mx.add_argument("--kernels", type=_spec_list, default=None,
                        help="comma-separated kernel specs (default: every suite in the catalog, "
                             "plus the i386 and arm64 flavours marked matrix = true)")
        mx.add_argument("--checks", type=_check_list(CHECK_NAMES), default=None,
                        help=f"comma-separated checks to run (default {','.join(CHECK_NAMES)}, "
                             f"none with --scenarios)")
        from vmprobe.check.scenarios import SCENARIOS
        mx.add_argument("--scenarios", type=_check_list(tuple(SCENARIOS)), default=[],
                        help=f"comma-separated built-in scenarios to run too ({','.join(SCENARIOS)})")
        mx.add_argument("--jobs", "-j", type=int, default=None,
                        help="kernels tested at once, each in a worker process (default: CPUs, at most "
                             "the number of kernels)")
        mx.add_argument("--json", type=Path, help="write every report as JSON here")
        mx.add_argument("--junit", type=Path, help="write JUnit XML here (a test case per kernel and check)")
        mx.add_argument("--accel", choices=ACCEL_CHOICES, default=os.environ.get("VMPROBE_ACCEL", "auto"),
                        help="kvm, tcg, or auto: KVM only if a real test boot works (default auto)")
        mx.add_argument("--smp", type=int, default=None,
                        help="guest CPUs (default 1, or the most a chosen scenario wants: smp 2)")
        mx.add_argument("--memory", default="1G", help="guest memory (default 1G)")
        mx.add_argument("--boot-timeout", type=float, default=120, help="seconds to reach READY (default 120)")
        _cold_arg(mx)
        _transport_arg(mx)
        _userland_arg(mx)
        mx.add_argument("--kernel-timeout", type=float, default=KERNEL_TIMEOUT,
                        help=f"seconds one kernel may take in all, fetch included (default {KERNEL_TIMEOUT:.0f})")

    if want("doctor"):
        dr = sub.add_parser("doctor", help="check the host (QEMU, gdb, KVM by a real test boot, disk, "
                                           "archive, compilers) and say what to fix")
        dr.add_argument("--json", action="store_true", help="print the checks as JSON")
        dr.add_argument("--kvm-timeout", type=float, default=None,
                        help="seconds the KVM test boot may take (default that of --accel auto)")
    return parser

def _spec_list(text: str) -> list[str]:
    specs = [s.strip() for s in text.split(",") if s.strip()]
    if not specs:
        raise argparse.ArgumentTypeError("give at least one kernel spec, e.g. debian:bookworm")
    return list(dict.fromkeys(specs))

def _check_list(known: tuple[str, ...]):
    def parse(text: str) -> list[str]:
        names = [s.strip() for s in text.split(",") if s.strip()]
        unknown = [n for n in names if n not in known]
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"unknown check(s) {', '.join(unknown) or '(none)'}; "
                                             f"choose from {', '.join(known)}")
        return list(dict.fromkeys(names))
    return parse

"""The ``vmprobe`` command line: a thin face over kernels, Machine and ProbeCheck."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import shlex
import shutil
import sys
import time
from pathlib import Path

from vmprobe import modules
from vmprobe.arch import Mechanism
from vmprobe.check.probe import AFTER_ENTRY, ProbeOptions
from vmprobe.check.run import run_check
from vmprobe.errors import EXIT_CODES, EXIT_INTERRUPTED, VmprobeError
from vmprobe.host import progress
from vmprobe.host.processes import install_signal_handlers
from vmprobe.kernels import DEFAULT_SPEC, get_kernel, list_kernels
from vmprobe.vm.accel import CHOICES as ACCEL_CHOICES
from vmprobe.vm.machine import Machine


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


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
    p.add_argument("--smp", type=int, default=1, help="guest CPUs (default 1: fastest under TCG)")
    p.add_argument("--verbose", "-v", action="store_true",
                   help="stream the guest's serial console to stderr while the command runs")
    p.add_argument("--memory", default="1G", help="guest memory (default 1G)")
    p.add_argument("--boot-timeout", type=float, default=120, help="seconds to reach READY (default 120)")
    p.add_argument("--append", action="append", default=[], help="extra kernel command-line argument")
    p.add_argument("--console-log", type=Path, help="save the guest's serial console to this file")
    _cold_arg(p)


def _cold_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cold", action="store_true", default=bool(os.environ.get("VMPROBE_COLD")),
                   help="boot the kernel instead of restoring the saved warm-start state (fresh "
                        "KASLR layout and RNG; default $VMPROBE_COLD, else warm)")


def _machine(args, kernel) -> Machine:
    return Machine(kernel, accel=args.accel, smp=args.smp, memory=args.memory,
                   boot_timeout=args.boot_timeout, append=tuple(args.append), warm=not args.cold,
                   log=_log)


def _verbose(args, machine: Machine) -> Machine:
    """--verbose: stream the machine's console to stderr (ends by itself when the machine does)."""
    if args.verbose:
        progress.stream_console(machine)
    return machine


def _save_console(machine: Machine, path: Path | None) -> None:
    if path and machine.console:
        path.write_text(machine.console.text)


def build_parser() -> argparse.ArgumentParser:
    codes = "\n".join(f"  {code:>3}  {name}" for name, code in sorted(EXIT_CODES.items(), key=lambda x: x[1]))
    parser = argparse.ArgumentParser(
        prog="vmprobe", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Test Linux kprobe modules against real kernels in QEMU.",
        epilog=f"exit codes of vmprobe's own failures:\n{codes}\n  130  interrupted\n"
               f"(`vmprobe exec` otherwise exits with the guest command's status)")
    sub = parser.add_subparsers(dest="command", required=True)

    kernels = sub.add_parser("kernels", help="list or fetch kernels")
    ksub = kernels.add_subparsers(dest="kernels_command", required=True)
    kl = ksub.add_parser("list", help="the catalog and what is cached")
    kl.add_argument("--json", action="store_true")
    kf = ksub.add_parser("fetch", help="download a kernel into the cache")
    kf.add_argument("spec", nargs="?", default=DEFAULT_SPEC)
    kf.add_argument("--refresh", action="store_true", help="refresh the archive's package lists first")
    from vmprobe.kernels.build import add_build_arguments
    add_build_arguments(ksub)

    ex = sub.add_parser("exec", help="boot a kernel, run a command in it, exit with its status")
    _machine_args(ex)
    ex.add_argument("--timeout", type=float, default=600, help="seconds the command may run (default 600)")
    ex.add_argument("cmd", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS…]")

    sh = sub.add_parser("shell", help="boot a kernel and open an interactive shell in it")
    _machine_args(sh)

    pr = sub.add_parser("probe", help="arm a kprobe in a VM and verify it end to end")
    _machine_args(pr)
    pr.add_argument("--symbol", help="function to probe (default: the kernel's fork function)")
    pr.add_argument("--offset", type=_offset, default=0,
                    help="offset into the function, or after-entry: past ENDBR and the fentry site (default 0)")
    pr.add_argument("--no-post-handler", dest="post_handler", action="store_false",
                    help="no post handler (lets x86 optimize the probe into a jump)")
    pr.add_argument("--module", type=Path,
                    help="your own module: a .c file, a directory with a Kbuild, or a built .ko")
    pr.add_argument("--module-params", default="", help="parameters for insmod of --module")
    pr.add_argument("--trigger", help="command that makes the probe fire (default: forks)")
    pr.add_argument("--no-sysrq", dest="sysrq", action="store_false", help="skip the SysRq checks")
    pr.add_argument("--expect-mechanism", choices=[m.value for m in Mechanism if m.armed],
                    help="fail unless the probe is armed this way")
    pr.add_argument("--json", type=Path, help="write the report as JSON here")
    pr.add_argument("--repeat", type=int, default=1, metavar="N",
                    help="N load → trigger → unload cycles on one VM, each verified, memory read after "
                         "each, with a leak verdict (default 1)")
    pr.add_argument("--leak-threshold", type=float, default=None, metavar="KIB",
                    help="--repeat: a leak is unreclaimable slab growing faster than this many KiB per "
                         "cycle (default 16)")
    pr.add_argument("--allow-splat", action="append", default=[], metavar="REGEX", type=_regex,
                    help="a splat (WARNING, lockdep, KASAN… the kernel lived on after) whose title "
                         "matches REGEX does not fail the check (repeatable)")

    gd = sub.add_parser("gdb", help="boot a kernel and attach gdb to it, with its symbols",
                        description="gdb on the guest's gdbstub, with the kernel's symbols (from its "
                                    "/proc/kallsyms, or the -dbg package's vmlinux) and a module's at "
                                    "its load address. The VM stops when gdb exits.")
    _machine_args(gd)
    gd.add_argument("--module", nargs="?", type=Path, const=modules.FORK_PROBE,
                    help="load this module (.c, Kbuild dir or .ko; alone: the built-in fork probe) "
                         "and its symbols")
    gd.add_argument("--module-params", default="", help="parameters for insmod of --module")
    gd.add_argument("--vmlinux-dbg", action="store_true",
                    help="symbols and DWARF from the -dbg package's vmlinux (a 260-800 MB download, cached)")
    gd.add_argument("--batch", action="store_true", help="run the -ex commands, print, detach, exit")
    gd.add_argument("-ex", dest="ex", action="append", default=[], metavar="CMD",
                    help="a gdb command to run after attaching (repeatable)")
    gd.add_argument("--timeout", type=float, default=300, help="seconds a --batch gdb may run (default 300)")

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

    from vmprobe.check.run import CHECK_NAMES
    from vmprobe.runs.matrix import KERNEL_TIMEOUT
    mx = sub.add_parser("matrix", help="the probe checks on several kernels, in parallel",
                        description="For each kernel: one VM, the probe checks (entry: ftrace at "
                                    "the entry; int3: the next instruction with a post handler; "
                                    "optimized: the same without one). Exits 0 only if all pass.")
    mx.add_argument("--kernels", type=_spec_list, default=None,
                    help="comma-separated kernel specs (default: every suite in the catalog, "
                         "plus the i386 and arm64 flavours marked matrix = true)")
    mx.add_argument("--checks", type=_check_list(CHECK_NAMES), default=list(CHECK_NAMES),
                    help=f"comma-separated checks to run (default {','.join(CHECK_NAMES)})")
    mx.add_argument("--jobs", "-j", type=int, default=None,
                    help="kernels tested at once, each in a worker process (default: CPUs, at most "
                         "the number of kernels)")
    mx.add_argument("--json", type=Path, help="write every report as JSON here")
    mx.add_argument("--junit", type=Path, help="write JUnit XML here (a test case per kernel and check)")
    mx.add_argument("--accel", choices=ACCEL_CHOICES, default=os.environ.get("VMPROBE_ACCEL", "auto"),
                    help="kvm, tcg, or auto: KVM only if a real test boot works (default auto)")
    mx.add_argument("--smp", type=int, default=1, help="guest CPUs (default 1)")
    mx.add_argument("--memory", default="1G", help="guest memory (default 1G)")
    mx.add_argument("--boot-timeout", type=float, default=120, help="seconds to reach READY (default 120)")
    _cold_arg(mx)
    mx.add_argument("--kernel-timeout", type=float, default=KERNEL_TIMEOUT,
                    help=f"seconds one kernel may take in all, fetch included (default {KERNEL_TIMEOUT:.0f})")
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


def cmd_kernels(args) -> int:
    if args.kernels_command == "list":
        rows = list_kernels()
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        print(f"{'SPEC':36} {'SERIES':7} {'ARCH':6} CACHED")
        for row in rows:
            spec = row["spec"] + (" (default)" if row["default"] else "")
            print(f"{spec:36} {row['series']:7} {row['arch']:6} {', '.join(row['cached']) or '-'}")
        return 0
    if args.kernels_command == "build":
        from vmprobe.kernels.build import cmd_build
        return cmd_build(args, _log)
    kernel = get_kernel(args.spec, refresh=args.refresh, log=_log)
    print(f"{kernel.spec} {kernel.release} {kernel.version} {kernel.arch} -> {kernel.root}")
    return 0


def cmd_exec(args) -> int:
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        raise SystemExit("vmprobe exec: give a command after --, e.g. vmprobe exec -- uname -r")
    command = cmd[0] if len(cmd) == 1 else shlex.join(cmd)
    kernel = get_kernel(args.kernel, log=_log)
    machine = _machine(args, kernel)
    _verbose(args, machine)
    try:
        with machine:
            result = machine.run(command, args.timeout, stdout=sys.stdout.buffer, stderr=sys.stderr.buffer)
        return result.status
    finally:
        _save_console(machine, args.console_log)


def cmd_shell(args) -> int:
    kernel = get_kernel(args.kernel, log=_log)
    machine = _machine(args, kernel)
    _verbose(args, machine)
    try:
        with machine:
            _log(f"vmprobe: {kernel.release} is up; exit the shell to stop the VM")
            return _interactive(machine)
    finally:
        _save_console(machine, args.console_log)


def _interactive(machine: Machine) -> int:
    """A shell on a pty in the guest, with the local terminal in raw mode."""
    import termios
    import tty

    if not sys.stdin.isatty():  # a script on stdin: feed it to the guest's shell
        channel = machine.ssh.start("sh -s")
        channel.sendall(sys.stdin.buffer.read())
        channel.shutdown_write()
        return machine.ssh.wait(channel, "sh -s", 3600, stdout=sys.stdout.buffer,
                                stderr=sys.stderr.buffer).status
    size = shutil.get_terminal_size()
    channel = machine.ssh._transport().open_session()
    channel.get_pty(term=os.environ.get("TERM", "vt100"), width=size.columns, height=size.lines)
    channel.invoke_shell()
    saved = termios.tcgetattr(sys.stdin)
    try:
        tty.setraw(sys.stdin.fileno())
        while not channel.exit_status_ready():
            ready, _, _ = select.select([sys.stdin, channel], [], [], 0.5)
            if channel in ready:
                data = channel.recv(65536)
                if not data:
                    break
                os.write(sys.stdout.fileno(), data)
            if sys.stdin in ready:
                data = os.read(sys.stdin.fileno(), 1024)
                if not data:
                    break
                channel.sendall(data)
    finally:
        termios.tcsetattr(sys.stdin, termios.TCSADRAIN, saved)
    return channel.recv_exit_status() if channel.exit_status_ready() else 0


def cmd_probe(args) -> int:
    kernel = get_kernel(args.kernel, log=_log)
    t0 = time.monotonic()
    source = args.module or modules.FORK_PROBE
    module = modules.build(source, kernel, log=_log)[0]
    build_time = time.monotonic() - t0
    options = ProbeOptions(symbol=args.symbol, offset=args.offset, post_handler=args.post_handler,
                           trigger=args.trigger, module_params=args.module_params,
                           builtin_template=args.module is None, sysrq=args.sysrq)
    machine = _machine(args, kernel)
    _verbose(args, machine)
    try:
        with machine:
            run = run_check(machine, module, options, source=args.module,
                            expect_mechanism=args.expect_mechanism, build_seconds=build_time, log=_log,
                            allow=_allow_rules(args.allow_splat), repeat=max(1, args.repeat),
                            **({"leak_threshold_kb": args.leak_threshold} if args.leak_threshold else {}))
    finally:
        _save_console(machine, args.console_log)
    if args.json:
        run.report.write_json(args.json)
    if run.error:
        raise run.error
    print(run.report.summary())
    return 0 if run.report.verdict == "pass" else 1


def _allow_rules(patterns: list[str]):
    from vmprobe.check.findings import rules
    return rules(patterns, "--allow-splat")


def cmd_matrix(args) -> int:
    from vmprobe.kernels import parse_spec
    from vmprobe.kernels.catalog import load_catalog, matrix_specs
    from vmprobe.runs import matrix

    catalog = load_catalog()
    specs = args.kernels or matrix_specs(catalog)
    for spec in specs:
        parse_spec(spec, catalog)  # a bad spec fails here (exit 64), before any VM starts
    jobs = args.jobs or min(len(specs), os.cpu_count() or 1)
    machine_kw = {"accel": args.accel, "smp": args.smp, "memory": args.memory,
                  "boot_timeout": args.boot_timeout, "warm": not args.cold}
    _log(f"vmprobe matrix: {len(specs)} kernel(s) × {', '.join(args.checks)} with {jobs} worker(s)")
    os.environ.setdefault("VMPROBE_PROGRESS", "0")  # parallel workers would draw over each other
    result = matrix.run_matrix(specs, args.checks, jobs=jobs, machine_kw=machine_kw,
                               kernel_timeout=args.kernel_timeout)
    print(matrix.format_table(result))
    if args.json:
        matrix.write_json(result, args.json)
    if args.junit:
        matrix.write_junit(result, args.junit)
    return 0 if result["verdict"] == "pass" else 1


def cmd_doctor(args) -> int:
    from vmprobe.runs import doctor
    checks = doctor.run_checks(**({"kvm_timeout": args.kvm_timeout} if args.kvm_timeout else {}), log=_log)
    print(doctor.to_json(checks) if args.json else doctor.format_checks(checks), end="" if args.json else "\n")
    return doctor.exit_code(checks)


def cmd_gdb(args) -> int:
    from vmprobe.runs import debugger
    machines: list[Machine] = []

    def make(kernel) -> Machine:
        machines.append(_machine(args, kernel))
        return machines[-1]
    try:
        return debugger.command(args, make, _log)
    finally:
        for machine in machines:
            _save_console(machine, args.console_log)


def cmd_repro(args) -> int:
    from vmprobe.runs import repro
    return repro.command(args, _log, _interactive)


def main(argv: list[str] | None = None) -> int:
    install_signal_handlers()
    args = build_parser().parse_args(argv)
    handler = {"kernels": cmd_kernels, "exec": cmd_exec, "shell": cmd_shell, "probe": cmd_probe,
               "matrix": cmd_matrix, "doctor": cmd_doctor, "gdb": cmd_gdb, "repro": cmd_repro}
    try:
        return handler[args.command](args)
    except VmprobeError as exc:
        print(exc.render(), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("vmprobe: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        progress.stop_streams()
        with contextlib.suppress(Exception):
            sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())

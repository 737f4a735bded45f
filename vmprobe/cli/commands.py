"""One function per subcommand: each calls the layers below and returns the exit status."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from vmprobe.host import progress
from vmprobe.runs import live_commands

if TYPE_CHECKING:
    from vmprobe.vm.machine import Machine



def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)

def _machine(args, kernel) -> Machine:
    from vmprobe.check.scenarios import default_smp
    from vmprobe.vm.machine import Machine
    smp = args.smp or default_smp(getattr(args, "scenario", None))
    return Machine(kernel, accel=args.accel, smp=smp, memory=args.memory,
                   boot_timeout=args.boot_timeout, append=tuple(args.append), warm=not args.cold,
                   transport=getattr(args, "transport", "auto"), userland=getattr(args, "userland", "auto"),
                   log=_log)

def _kernel_and_machine(args):
    from vmprobe.kernels import get_kernel
    kernel = get_kernel(args.kernel, log=_log)
    return kernel, _machine(args, kernel)

def _verbose(args, machine: Machine) -> Machine:
    """--verbose: stream the machine's console to stderr (ends by itself when the machine does)."""
    if args.verbose:
        progress.stream_console(machine)
    return machine

def _save_console(machine: Machine, path: Path | None) -> None:
    if path and machine.console:
        path.write_text(machine.console.text)

def cmd_kernels(args) -> int:
    from vmprobe.kernels import get_kernel, list_kernels
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

def cmd_rootfs(args) -> int:
    from vmprobe.guest import rootfs
    from vmprobe.kernels import get_kernel
    kernel = get_kernel(args.kernel, log=_log)
    base = rootfs.export(kernel, args.output, args.userland, log=_log)
    print(f"{args.output}: the {base.userland} guest for {kernel.release} ({args.output.stat().st_size} bytes, "
          f"no secrets). Build it in with CONFIG_INITRAMFS_SOURCE={args.output.resolve()}; vmprobe then "
          f"sends each run's keys over the control port.")
    return 0

def cmd_exec(args) -> int:
    command = live_commands.command_of(args)
    if args.on:
        return live_commands.exec_on(args, command, _log)
    return _in_a_fresh_guest(args, lambda kernel, machine: machine.run(   # one command: no guest shell
        command, args.timeout, alone=True, stdout=sys.stdout.buffer, stderr=sys.stderr.buffer).status)

def cmd_shell(args) -> int:
    if args.on:
        return live_commands.shell_on(args, _log)
    def shell(kernel, machine) -> int:
        from vmprobe.runs.guest_files import interactive
        _log(f"vmprobe: {kernel.release} is up; exit the shell to stop the VM")
        return interactive(machine)
    return _in_a_fresh_guest(args, shell)

def _in_a_fresh_guest(args, body) -> int:
    """exec and shell without --on: boot (or --dry-run), copy --put/--module in, ``body(kernel, machine)``."""
    from vmprobe.runs import guest_files
    kernel, machine = _kernel_and_machine(args)
    if args.dry_run:
        return guest_files.dry_run(machine)
    files = guest_files.prepare(args, kernel, _log)
    _verbose(args, machine)
    try:
        with machine:
            guest_files.copy_in(machine.upload, files, _log)
            return body(kernel, machine)
    finally:
        _save_console(machine, args.console_log)

def cmd_probe(args) -> int:
    if args.on:
        return live_commands.probe_on(args, _log)
    if args.watch:
        raise SystemExit("vmprobe probe: --watch needs a live VM: vmprobe up, then probe --on NAME --watch")
    from vmprobe import modules
    from vmprobe.check.probe import ProbeOptions
    from vmprobe.check.run import run_check
    from vmprobe.kernels import get_kernel
    kernel = get_kernel(args.kernel, log=_log)
    if args.dry_run:
        from vmprobe.runs import guest_files
        return guest_files.dry_run(_machine(args, kernel))
    t0 = time.monotonic()
    source = args.module or modules.FORK_PROBE
    scenario = None if args.scenario == "fork" else args.scenario
    if scenario and args.module:
        raise SystemExit("vmprobe probe: --scenario brings its own module; --module is for the fork check")
    module = None if scenario else modules.build(source, kernel, log=_log)[0]
    build_time = None if scenario else time.monotonic() - t0
    offset = args.offset if args.offset is not None or args.module else 0
    options = ProbeOptions(symbol=args.symbol, offset=offset, post_handler=args.post_handler,
                           trigger=args.trigger, module_params=args.module_params,
                           builtin_template=args.module is None, sysrq=args.sysrq, min_hits=args.min_hits)
    machine = _machine(args, kernel)
    _verbose(args, machine)
    machine.gdbs.ahead()   # gdb starts while the machine restores or boots
    try:
        with machine:
            run = run_check(machine, module, options, source=args.module,
                            expect_mechanism=args.expect_mechanism, build_seconds=build_time, log=_log,
                            scenario=scenario, allow=_allow_rules(args.allow_splat), repeat=max(1, args.repeat),
                            **({"leak_threshold_kb": args.leak_threshold} if args.leak_threshold else {}))
    finally:
        _save_console(machine, args.console_log)
    if args.json:
        run.report.write_json(args.json)
    if run.error:
        raise run.error
    print(run.report.summary())
    return 0 if run.report.verdict in ("pass", "skip") else 1   # skip: the scenario cannot apply

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
    from vmprobe.check.run import CHECK_NAMES
    from vmprobe.check.scenarios import default_smp
    if args.checks is None:
        args.checks = [] if args.scenarios else list(CHECK_NAMES)
    args.checks = args.checks + args.scenarios
    smp = args.smp or max([1, *(default_smp(n) for n in args.scenarios)])
    machine_kw = {"accel": args.accel, "smp": smp, "memory": args.memory,
                  "boot_timeout": args.boot_timeout, "warm": not args.cold,
                  "transport": args.transport, "userland": args.userland}
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
    if args.on:
        return live_commands.gdb_on(args, _log)
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
    from vmprobe.runs.guest_files import interactive
    return repro.command(args, _log, interactive)

"""One probe-check run, as every face runs it (CLI, matrix, repro, pytest plugin).

It owns the end of a check that the faces used to write each on their own:
the report's ``repro`` block (what it takes to run the same check again), the
timings (module build, the machine's boot or restore, the check's phases) and
the expected-mechanism check. It also holds the named checks the matrix runs
per kernel (entry, int3, optimized), whose expectations come from the arch
profile, so that a matrix report can be re-run by name.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from vmprobe.arch import PROFILES, Mechanism
from vmprobe.check import findings as _findings
from vmprobe.check import repeat as _repeat
from vmprobe.check.probe import AFTER_ENTRY, ProbeCheck, ProbeOptions
from vmprobe.check.report import ProbeReport
from vmprobe.check.scenarios import get_scenario
from vmprobe.errors import VmprobeError
from vmprobe.host import cache
from vmprobe.modules import FORK_PROBE, Module, source_files
from vmprobe.vm.machine import Machine

REPRO_FORMAT = 1
BUILTIN = "builtin:vmprobe_fork"
#: ProbeOptions fields a re-run needs (timeouts are the tool's, not the check's)
OPTION_FIELDS = ("symbol", "offset", "post_handler", "trigger", "module_params", "builtin_template",
                 "sysrq", "registers", "min_hits")


# --------------------------------------------------------------------------
# the named checks of a kernel matrix

@dataclass(frozen=True)
class NamedCheck:
    name: str
    offset: int | str  # bytes, or "after-entry"
    post_handler: bool
    expect_mechanism: str | None   # None: any mechanism is fine (the arch has no such expectation)
    about: str

    def options(self) -> ProbeOptions:
        return ProbeOptions(offset=self.offset, post_handler=self.post_handler)


CHECK_NAMES = ("entry", "int3", "optimized")


def named_checks(kernel) -> list[NamedCheck]:
    """The probe checks a matrix runs on ``kernel`` (a :class:`~vmprobe.kernels.Kernel`), in order.

    On x86 the fork function starts with a 5-byte ``call __fentry__`` (after an
    ``endbr64`` on IBT kernels, 6.12+): a probe at +0 rides ftrace (IBT kernels
    arm it at +4), one on the first instruction after the entry is an int3 with
    a post handler and an optimized jump without one. That instruction's offset
    is read from the function's bytes in the guest (``after-entry``).
    arm64 has neither ftrace-based nor optimized kprobes: all three checks
    expect the ``brk`` word there (the entry probe on the patch site's first
    slot, the others past it), which is what proves there is no jump.
    """
    profile = PROFILES.get(kernel.arch)
    if profile is None:
        expect: dict[str, str | None] = dict.fromkeys(CHECK_NAMES)
    else:
        plain = profile.breakpoint_mechanism
        expect = {"entry": Mechanism.FTRACE if profile.has_ftrace_probes else plain, "int3": plain,
                  "optimized": Mechanism.OPTIMIZED if profile.has_optprobes else plain}
    return [
        NamedCheck("entry", 0, True, expect["entry"], "probe on the function entry (the fentry site)"),
        NamedCheck("int3", AFTER_ENTRY, True, expect["int3"],
                   "first instruction after the entry, with a post handler"),
        NamedCheck("optimized", AFTER_ENTRY, False, expect["optimized"],
                   "first instruction after the entry, without a post handler"),
    ]


def named_check(kernel, name: str) -> NamedCheck | None:
    return next((c for c in named_checks(kernel) if c.name == name), None)


# --------------------------------------------------------------------------
# the repro block

def source_digest(source: Path) -> str:
    """sha256 over a module source: a .c/.ko file, or a directory's files (names and bytes)."""
    source = source.resolve()
    if source.is_file():
        return cache.sha256_file(source)
    base, files = source_files(source)
    return cache.digest(*[f"{f.relative_to(base)}:{cache.sha256_file(f)}" for f in files])


def is_builtin(source: Path | None) -> bool:
    return source is None or Path(source).resolve() == FORK_PROBE.resolve()


def repro_inputs(machine: Machine, module: Module, source: Path | None, options: ProbeOptions,
                 expect_mechanism: str | None = None) -> dict:
    """The ``repro`` block of a report: everything needed to run the same check again."""
    builtin = is_builtin(source)
    src = FORK_PROBE if builtin else Path(source).resolve()
    return {
        "format": REPRO_FORMAT,
        "kernel": _kernel_block(machine.kernel),
        "module": {"source": BUILTIN if builtin else str(src), "sha256": source_digest(src),
                   "name": module.name, "ko_sha256": cache.sha256_file(module.path)},
        "options": {name: getattr(options, name) for name in OPTION_FIELDS},
        "expect_mechanism": expect_mechanism,
        "machine": _machine_block(machine),
    }


def _kernel_block(k) -> dict:
    return {"spec": k.spec, "release": k.release, "version": k.version, "arch": k.arch,
            "packages": k.packages, "image_sha256": k.image_sha256}


def _machine_block(machine: Machine) -> dict:
    return {"accel": machine.accel, "requested_accel": machine.requested_accel,
            "smp": machine.smp, "memory": machine.memory,
            "append": list(machine.extra_append), "boot_timeout": machine.boot_timeout,
            "warm": getattr(machine, "warm", None),   # restored from a saved state
            "userland": getattr(machine, "userland", "auto"),   # as asked (auto: by the era table)
            "transport": getattr(getattr(machine, "ssh", None), "name", None)}   # what commands went over


def scenario_repro(machine: Machine, name: str) -> dict:
    """The ``repro`` block of a scenario's report: the scenario names its module and steps."""
    return {"format": REPRO_FORMAT, "scenario": name, "kernel": _kernel_block(machine.kernel),
            "module": {}, "options": {}, "expect_mechanism": None, "machine": _machine_block(machine)}


# --------------------------------------------------------------------------
# the run

@dataclass
class CheckRun:
    """A finished check: its report, and the vmprobe error that ended it early (if any)."""
    check: ProbeCheck
    error: VmprobeError | None
    seconds: float

    @property
    def report(self) -> ProbeReport:
        return self.check.report

    @property
    def verdict(self) -> str:
        return "error" if self.error else self.report.verdict


def run_check(machine: Machine, module: Module | None, options: ProbeOptions, *, source: Path | None = None,
              expect_mechanism: str | None = None, build_seconds: float | None = None, log=None,
              on_start=None, scenario: str | None = None, allow: "list[_findings.AllowRule] | tuple" = (),
              repeat: int = 1, leak_threshold_kb: float = _repeat.LEAK_THRESHOLD_KB) -> CheckRun:
    """Run the probe check on a booted ``machine``; vmprobe's errors are kept in the result.

    ``source`` is the module's source as the user named it (None: the built-in
    template), for the repro block. ``on_start(check)`` is called before the
    check runs (the pytest plugin keeps the report for failure artefacts).
    ``scenario`` names a built-in scenario (``check/scenarios/``; None or
    ``fork``: the probe check); a scenario builds its own module (``module`` is
    ignored) and uses no ``options``.
    ``allow``: the rules that allow splat findings (``findings.AllowRule``);
    a finding none allows fails the check. ``repeat`` > 1: that many load → trigger →
    unload cycles on this machine, memory read after each, a leak verdict (``check/repeat.py``).
    """
    spec = get_scenario(scenario)
    if spec is None:
        check = ProbeCheck(machine, module, options, log=log)
        check.report.repro = repro_inputs(machine, module, source, options, expect_mechanism)
    else:
        check = spec.check(machine, log=log)
        check.report.repro = scenario_repro(machine, spec.name)
    report = check.report
    report.repro["allow_splats"] = [{"pattern": a.pattern, "source": a.source} for a in allow]
    if repeat > 1:
        report.repro["repeat"] = repeat
    if on_start:
        on_start(check)
    t0 = time.monotonic()
    error, before = None, {}
    try:
        before = _repeat.memory(machine, module.name) if repeat > 1 else {}
        check.run()
    except VmprobeError as exc:
        error = exc
    if repeat > 1 and before:
        error = _repeat.run_cycles(machine, module, options, report, time.monotonic() - t0, error, before,
                                   repeat, leak_threshold_kb, log)
    seconds = time.monotonic() - t0
    if spec is not None and check.module is not None:
        report.repro["module"] = {"source": f"builtin:{spec.module}", "name": check.module.name,
                                  "ko_sha256": cache.sha256_file(check.module.path)}
    _findings.allow(report.findings, allow)
    report.timings = {**({"build": build_seconds} if build_seconds is not None else {}),
                      **{f"vm-{k}": v for k, v in machine.timings.items()}, **report.timings}
    if expect_mechanism and error is None:
        got = report.probe.get("mechanism")
        report.check(f"mechanism is {expect_mechanism}", got == expect_mechanism, f"got {got}")
    return CheckRun(check, error, seconds)

"""``vmprobe repro REPORT.json``: run a failed check again, with the same inputs.

``vmprobe probe --json`` and ``vmprobe matrix --json`` record, per check, a
``repro`` block: the kernel (canonical spec with its ABI, package version,
package hashes), the module (source path and a hash of its content, or the
built-in fork probe), the probe options, the expected mechanism and the
machine (accelerator actually used, CPUs, memory, extra kernel arguments).
``repro`` reads it back, boots the same kernel, builds the same module and runs
the same check; it says whether the failure came back. With ``--keep`` (the
default on a terminal) the VM stays up afterwards: a shell in the guest, and a
gdb script with the kernel's symbols to attach from another terminal.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from vmprobe import modules
from vmprobe.check.findings import AllowRule
from vmprobe.check.probe import ProbeOptions
from vmprobe.check.run import BUILTIN, OPTION_FIELDS, REPRO_FORMAT, named_check, run_check, source_digest
from vmprobe.errors import ConfigError, VmprobeError
from vmprobe.guest.loader import insmod_line
from vmprobe.host import cache


@dataclass
class Case:
    label: str                      # e.g. "debian:bookworm int3" or "probe"
    repro: dict
    verdict: str                    # pass / fail / error, as reported
    failed: list[str] = field(default_factory=list)   # names of the failed checks
    error: str | None = None


def _failed_checks(report: dict | None) -> list[str]:
    return sorted(c["name"] for c in (report or {}).get("checks", []) if c.get("ok") is False)


def _error_kind(error: str | None) -> str | None:
    """The error's kind ("module load failed", …) from a report's error text."""
    if not error:
        return None
    return error.removeprefix("vmprobe: ").split(" in phase ", 1)[0].split(": ", 1)[0].strip()


def load_cases(data: dict, *, every: bool = False) -> list[Case]:
    """The checks of a probe or matrix report to run again (the failed ones, or ``every``)."""
    cases = []
    if "kernels" in data:  # a matrix report
        for k in data["kernels"]:
            for c in k["checks"]:
                report = c.get("report") or {}
                repro = c.get("repro") or report.get("repro")
                if not repro:  # never ran (fetch or boot failed first): rebuild from the matrix check
                    repro = {"format": REPRO_FORMAT, "kernel": {"spec": (k.get("kernel") or {}).get("spec", k["spec"])},
                             "matrix_check": c["name"], "machine": data.get("machine", {})}
                cases.append(Case(f"{k['spec']} {c['name']}", repro, c["verdict"], _failed_checks(report),
                                  c.get("error")))
    elif "repro" in data:
        cases.append(Case("probe", data["repro"], "error" if data.get("error") else data["verdict"],
                          _failed_checks(data), data.get("error")))
    else:
        raise ConfigError("this JSON is not a vmprobe report with re-run inputs (no 'repro' block: "
                          "written by an older vmprobe, or not by 'vmprobe probe/matrix --json')")
    return cases if every else [c for c in cases if c.verdict != "pass"]


@dataclass
class Outcome:
    verdict: str                   # pass / fail / error
    failed: list[str]
    error: str | None
    summary: str
    exit_code: int

    def same_as(self, case: Case) -> bool:
        if case.verdict == "pass":
            return self.verdict == "pass"
        if case.verdict == "error" or self.verdict == "error":
            return self.verdict == case.verdict and _error_kind(self.error) == _error_kind(case.error)
        return self.verdict == "fail" and self.failed == case.failed


def _options(repro: dict, kernel) -> tuple[ProbeOptions, str | None]:
    if "matrix_check" in repro:
        check = named_check(kernel, repro["matrix_check"])
        if check is None:
            raise ConfigError(f"unknown matrix check {repro['matrix_check']!r}")
        return check.options(), check.expect_mechanism
    known = {k: v for k, v in repro.get("options", {}).items() if k in OPTION_FIELDS}
    return ProbeOptions(**known), repro.get("expect_mechanism")


def _module_source(repro: dict, override: Path | None, log) -> Path:
    mod = repro.get("module") or {"source": BUILTIN}
    if override:
        return override
    if mod["source"] == BUILTIN:
        src = modules.FORK_PROBE
    else:
        src = Path(mod["source"])
        if not src.exists():
            raise ConfigError(f"the report's module source {src} is not here: pass --module PATH")
    digest = mod.get("sha256")
    if digest and source_digest(src) != digest:
        log(f"vmprobe: warning: {src} changed since the report (sha256 {digest[:12]}… then, "
            f"{source_digest(src)[:12]}… now)")
    return src


def rerun(case: Case, *, accel: str | None = None, module: Path | None = None, log=None,
          keep=None) -> Outcome:
    """Run the case's check again; ``keep(machine, check, outcome)`` is called with the VM still up."""
    from vmprobe.kernels import get_kernel
    from vmprobe.vm.machine import Machine

    log = log or (lambda msg: None)
    r = case.repro
    kernel = get_kernel(r["kernel"]["spec"], log=log)
    want = r["kernel"].get("version")
    if want and kernel.version != want:
        log(f"vmprobe: warning: the report ran {r['kernel']['spec']} {want}; the cache has {kernel.version}")
    scenario = r.get("scenario")   # a built-in scenario builds its own module
    options, expect = _options(r, kernel) if not scenario else (ProbeOptions(), None)
    source = _module_source(r, module, log) if not scenario else None
    built = modules.build(source, kernel, log=log)[0] if not scenario else None
    ko_digest = (r.get("module") or {}).get("ko_sha256")
    if built and ko_digest and cache.sha256_file(built.path) != ko_digest:
        log("vmprobe: note: the rebuilt .ko differs from the report's (same sources, other build)")
    m = r.get("machine", {})
    extra = {"warm": m["warm"]} if m.get("warm") is not None else {}
    extra.update({k: m[k] for k in ("userland", "transport") if m.get(k)})
    machine = Machine(kernel, accel=accel or m.get("accel") or "auto", smp=m.get("smp", 1),
                      memory=m.get("memory", "1G"), append=tuple(m.get("append", ())),
                      boot_timeout=m.get("boot_timeout", 120), log=log, **extra)
    with machine:
        allow = [AllowRule(a["pattern"], a["source"]) for a in r.get("allow_splats", ())]
        run = run_check(machine, built, options, source=None if source == modules.FORK_PROBE else source,
                        expect_mechanism=expect, log=log, scenario=scenario, allow=allow,
                        repeat=r.get("repeat", 1))
        report = run.report
        if run.error:
            outcome = Outcome("error", _failed_checks(report.to_dict()), report.error or run.error.render(),
                              run.error.render(), run.error.exit_code)
        else:
            outcome = Outcome(report.verdict, _failed_checks(report.to_dict()), None, report.summary(),
                              0 if report.verdict == "pass" else 1)
        if keep:
            keep(machine, run.check, outcome)
    return outcome


def command(args, log, interact) -> int:
    """``vmprobe repro``: re-run the report's failed checks; exit with the (last) check's status."""
    try:
        data = json.loads(Path(args.report).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the report {args.report}: {exc}") from None
    cases = load_cases(data, every=args.all)
    if args.check:
        cases = [c for c in cases if args.check in c.label]
    if not cases:
        print(f"vmprobe repro: no failed check in {args.report} (use --all to re-run passing ones)")
        return 0
    keep = args.keep if args.keep is not None else sys.stdin.isatty()
    status = 0
    for case in cases:
        was = case.error.splitlines()[0] if case.error else ", ".join(case.failed) or case.verdict
        log(f"vmprobe repro: {case.label}: was {case.verdict.upper()} ({was})")
        t0 = time.monotonic()
        told = []

        def tell(outcome: Outcome) -> None:  # the outcome first, then (with --keep) the shell
            print(outcome.summary)
            print(verdict_line(case, outcome, time.monotonic() - t0), flush=True)
            told.append(True)

        def kept(machine, check, outcome: Outcome) -> None:
            tell(outcome)
            _keep(machine, check, interact, log)

        outcome = rerun(case, accel=args.accel, module=args.module, log=log, keep=kept if keep else None)
        if not told:
            tell(outcome)
        status = outcome.exit_code if outcome.exit_code else status
    return status


def verdict_line(case: Case, outcome: Outcome, seconds: float) -> str:
    same = outcome.same_as(case)
    now = outcome.error.splitlines()[0] if outcome.error else ", ".join(outcome.failed) or "all checks pass"
    if case.verdict == "pass":
        word = "STILL PASSES" if same else "NOW FAILS"
    else:
        word = "REPRODUCED" if same else "NOT REPRODUCED"
    return f"vmprobe repro: {case.label}: {word} — now {outcome.verdict.upper()} ({now}) in {seconds:.1f}s"


def _keep(machine, check, interact, log) -> None:
    """Keep the VM up: print how to attach gdb and to arm the module again, open a shell."""
    from vmprobe.runs import debugger
    gone = machine._exit_reason()
    if gone:
        log(f"vmprobe repro: nothing to keep: QEMU {gone}")
        return
    try:
        session = debugger.prepare(machine, None, None, log)
    except VmprobeError as exc:
        log(f"vmprobe repro: cannot keep the VM for inspection: {exc.render()}")
        return
    probe = check.report.probe
    opt = check.opt
    remote = f"/tmp/{check.module.path.name}"
    if opt.builtin_template:
        params = (f"symbol={probe.get('symbol')} offset={check.offset} nonce=repro "
                  f"post={1 if opt.post_handler else 0}")
        if probe.get("addr_param"):   # a kernel whose module cannot find the site by name
            params += f" addr={probe['addr_param']}"
    else:
        params = opt.module_params
    print(f"vmprobe repro: the VM stays up ({machine.kernel.release}, {machine.accel}) until you leave the shell.\n"
          f"  arm the probe again:   {insmod_line(remote, params)}\n"
          f"  its symbols in gdb:    cat /sys/module/{check.module.name}/sections/.text, then "
          f"add-symbol-file {check.module.path} <that address>\n"
          f"  attach gdb (another terminal): {debugger.hint(session)}\n"
          f"    (the guest stops while gdb is attached; 'detach' or quitting gdb resumes it)", flush=True)
    interact(machine)
    debugger.resume_guest(machine)


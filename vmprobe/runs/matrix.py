"""``vmprobe matrix``: the probe-check suite on several kernels at once.

For each kernel, in a worker process of its own (at most ``--jobs`` at a time):
fetch it, build the fork probe for it, boot one VM and run the checks in it
(:func:`vmprobe.check.run.named_checks` says which and with what offsets). The parent prints
progress as it happens, then a table kernel × check, and writes the reports as
JSON and the results as JUnit XML.

Workers are processes, not threads: a machine's QEMU gets a parent-death
signal tied to the thread that started it, and one kernel's crash or hang must
not stall the others. A worker gets SIGTERM when the parent dies (or gives up
on it), which stops its VM through the usual ``with Machine`` clean-up.
"""
from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import queue
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

from vmprobe.check.probe import ProbeOptions
from vmprobe.check.run import CHECK_NAMES, named_checks, run_check
from vmprobe.check.scenarios import SCENARIOS
from vmprobe.errors import VmprobeError
from vmprobe.runs import junit

KERNEL_TIMEOUT = 1800.0    # a whole kernel: cold fetch, module build, boot, the checks
CONSOLE_TAIL = 80          # console lines kept per check (JSON, JUnit system-out)


# --------------------------------------------------------------------------
# the worker: one kernel, one VM, its checks

def _tail(text: str, lines: int = CONSOLE_TAIL) -> str:
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])


def run_kernel(spec: str, check_names: list[str], machine_kw: dict,
               emit: Callable[..., None] = lambda kind, **kw: None) -> dict:
    """Fetch, build, boot and run the checks on one kernel; never raises for vmprobe's own
    failures (they are recorded in the result). Usable in-process too."""
    from vmprobe import modules
    from vmprobe.kernels import get_kernel
    from vmprobe.vm.machine import Machine

    result: dict = {"spec": spec, "kernel": None, "error": None, "timings": {}, "checks": [],
                    "console_tail": ""}
    machine = None
    log = lambda msg: emit("log", msg=msg)  # noqa: E731
    try:
        t = time.monotonic()
        kernel = get_kernel(spec, log=log)
        result["timings"]["fetch"] = time.monotonic() - t
        result["kernel"] = {"spec": kernel.spec, "release": kernel.release, "version": kernel.version,
                            "arch": kernel.arch}
        emit("kernel", release=kernel.release)
        checks = [c for c in named_checks(kernel) if c.name in check_names]
        checks += [SCENARIOS[n] for n in check_names if n in SCENARIOS]   # built-in scenarios, after
        t = time.monotonic()
        module = modules.build(modules.FORK_PROBE, kernel, log=log)[0] if any(
            c.name in CHECK_NAMES for c in checks) else None
        result["timings"]["build"] = time.monotonic() - t
        boots = 0
        for check in checks:
            if machine is None or machine.proc is None or machine.proc.poll() is not None:
                if machine is not None:
                    log(f"the VM died; booting a new one for {check.name}")
                    machine.shutdown()
                    machine = None
                t = time.monotonic()
                machine = Machine(kernel, log=log, **machine_kw)
                machine.__enter__()
                boots += 1
                result["timings"]["boot" if boots == 1 else f"boot{boots}"] = time.monotonic() - t
                emit("booted", seconds=time.monotonic() - t, accel=machine.accel)
            entry = _run_scenario(machine, check) if check.name in SCENARIOS else _run_check(machine, module, check)
            result["checks"].append(entry)
            emit("check", check=entry["name"], verdict=entry["verdict"], mechanism=entry["mechanism"],
                 hits=entry["hits"], seconds=entry["time"], error=entry["error"])
    except VmprobeError as exc:
        result["error"] = exc.render()
    except Exception:  # a bug: report it with the kernel instead of losing the whole matrix
        result["error"] = f"vmprobe: internal error:\n{traceback.format_exc()}"
    finally:
        if machine is not None:
            if machine.console:
                result["console_tail"] = _tail(machine.console.text)
            machine.shutdown()
    return result


def _run_check(machine, module, check, log=None) -> dict:
    mark = machine.console.mark()
    run = run_check(machine, module, check.options(), expect_mechanism=check.expect_mechanism, log=log)
    report = run.report
    error = run.error.render() if run.error else None
    return {"name": check.name, "about": check.about, "offset": report.probe.get("offset", check.offset),
            "post_handler": check.post_handler, "expected_mechanism": check.expect_mechanism,
            "verdict": run.verdict, "mechanism": report.probe.get("mechanism"), "hits": report.hits,
            "time": round(run.seconds, 3), "error": error, "summary": report.summary(),
            "report": report.to_dict(), "console_tail": _tail(machine.console.since(mark)),
            "repro": report.repro}


def _run_scenario(machine, scenario, log=None) -> dict:
    mark = machine.console.mark()
    run = run_check(machine, None, ProbeOptions(), scenario=scenario.name, log=log)
    report = run.report
    return {"name": scenario.name, "about": scenario.claim, "verdict": run.verdict,
            "mechanism": report.probe.get("mechanism"), "hits": report.hits, "time": round(run.seconds, 3),
            "error": run.error.render() if run.error else None, "summary": report.summary(),
            "report": report.to_dict(), "console_tail": _tail(machine.console.since(mark)),
            "repro": report.repro}


def _worker(spec: str, check_names: list[str], machine_kw: dict, events) -> None:
    """Entry point of a worker process."""
    from vmprobe.host.processes import die_with_parent, install_signal_handlers
    install_signal_handlers()          # SIGTERM → SystemExit → the VM is stopped and removed
    die_with_parent(signal.SIGTERM)
    if os.getppid() == 1:              # the parent died before prctl
        return

    def emit(kind: str, **kw) -> None:
        events.put({"spec": spec, "kind": kind, **kw})

    result = run_kernel(spec, check_names, machine_kw, emit)
    events.put({"spec": spec, "kind": "done", "result": result})


# --------------------------------------------------------------------------
# the parent: schedule, watch, collect

class MatrixRun:
    def __init__(self, specs: list[str], check_names: list[str], *, jobs: int, machine_kw: dict,
                 kernel_timeout: float = KERNEL_TIMEOUT, out=sys.stderr):
        self.specs, self.check_names = specs, check_names
        self.jobs = max(1, jobs)
        self.machine_kw, self.kernel_timeout = machine_kw, kernel_timeout
        self.out = out
        self.start = time.monotonic()
        self.results: dict[str, dict] = {}

    def say(self, spec: str, msg: str) -> None:
        print(f"[{time.monotonic() - self.start:6.1f}s] {spec}: {msg}", file=self.out, flush=True)

    def _event(self, ev: dict) -> None:
        spec, kind = ev["spec"], ev["kind"]
        if kind == "log":
            self.say(spec, ev["msg"].removeprefix("vmprobe: "))
        elif kind == "kernel":
            self.say(spec, f"kernel {ev['release']}")
        elif kind == "booted":
            self.say(spec, f"booted under {ev['accel']} in {ev['seconds']:.1f}s")
        elif kind == "check":
            what = ev["error"].splitlines()[0] if ev["error"] else f"{ev['mechanism']}, {ev['hits']} hits"
            self.say(spec, f"{ev['check']}: {ev['verdict'].upper()} ({what}) in {ev['seconds']:.1f}s")
        elif kind == "done":
            self.results[spec] = ev["result"]
            err = ev["result"]["error"]
            self.say(spec, "done" + (f": {err.splitlines()[0]}" if err else ""))

    def run(self) -> dict:
        ctx = multiprocessing.get_context("spawn")
        events = ctx.Queue()
        pending = list(self.specs)
        running: dict[str, tuple[multiprocessing.Process, float]] = {}
        try:
            while pending or running:
                while pending and len(running) < self.jobs:
                    spec = pending.pop(0)
                    proc = ctx.Process(target=_worker, name=f"vmprobe-matrix {spec}",
                                       args=(spec, self.check_names, self.machine_kw, events))
                    proc.start()
                    running[spec] = (proc, time.monotonic())
                    self.say(spec, f"started (worker pid {proc.pid})")
                with contextlib.suppress(queue.Empty):
                    self._event(events.get(timeout=0.5))
                    while True:
                        self._event(events.get_nowait())
                for spec, (proc, started) in list(running.items()):
                    if spec in self.results:
                        proc.join(10)
                        if proc.is_alive():
                            _stop(proc)
                        del running[spec]
                    elif not proc.is_alive():
                        self._drain(events, spec)
                        if spec not in self.results:
                            self.results[spec] = _failed(spec, f"vmprobe: the worker for {spec} exited "
                                                               f"with status {proc.exitcode} without a result")
                            self.say(spec, f"worker exited with status {proc.exitcode}")
                        del running[spec]
                    elif time.monotonic() - started > self.kernel_timeout:
                        self.say(spec, f"no result after {self.kernel_timeout:.0f}s: stopping its worker")
                        _stop(proc)
                        self._drain(events, spec)
                        self.results.setdefault(spec, _failed(
                            spec, f"vmprobe: {spec} did not finish within {self.kernel_timeout:.0f}s"))
                        del running[spec]
        finally:
            for spec, (proc, _) in running.items():  # interrupted: stop every VM before leaving
                _stop(proc)
            events.close()
            events.join_thread()
        return self.assemble(time.monotonic() - self.start)

    def _drain(self, events, spec: str, wait: float = 2.0) -> None:
        deadline = time.monotonic() + wait
        while spec not in self.results and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                self._event(events.get(timeout=0.1))

    def assemble(self, wall: float) -> dict:
        kernels = []
        for spec in self.specs:
            res = self.results.get(spec) or _failed(spec, "vmprobe: not run (interrupted)")
            done = {c["name"] for c in res["checks"]}
            for name in self.check_names:  # checks that never ran are errors, with the reason
                if name not in done:
                    res["checks"].append({"name": name, "verdict": "error", "mechanism": None,
                                          "hits": None, "time": 0.0, "report": None,
                                          "error": res["error"] or "vmprobe: not run",
                                          "console_tail": res.get("console_tail", "")})
            order = {n: i for i, n in enumerate(self.check_names)}
            res["checks"].sort(key=lambda c: order.get(c["name"], len(order)))
            kernels.append(res)
        ok = all(c["verdict"] in ("pass", "skip") for k in kernels for c in k["checks"])   # skip: n/a
        return {"verdict": "pass" if ok else "fail", "wall_time": round(wall, 3), "jobs": self.jobs,
                "checks": list(self.check_names), "machine": self.machine_kw, "kernels": kernels}


def _failed(spec: str, error: str) -> dict:
    return {"spec": spec, "kernel": None, "error": error, "timings": {}, "checks": [], "console_tail": ""}


def _stop(proc, grace: float = 30.0) -> None:
    """SIGTERM (the worker stops its VM), then SIGKILL if it does not go in time."""
    if proc.is_alive():
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        proc.join(grace)
    if proc.is_alive():
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.join(5)


def run_matrix(specs: list[str], check_names: list[str] = CHECK_NAMES, *, jobs: int = 2,
               machine_kw: dict | None = None, kernel_timeout: float = KERNEL_TIMEOUT,
               out=sys.stderr) -> dict:
    return MatrixRun(list(specs), list(check_names), jobs=jobs, machine_kw=machine_kw or {},
                     kernel_timeout=kernel_timeout, out=out).run()


# --------------------------------------------------------------------------
# output

def _cell(c: dict) -> str:
    if c["verdict"] == "error":
        return f"ERROR {c['time']:.1f}s" if c.get("time") else "ERROR"
    hits = f" {c['hits']}h" if c.get("hits") is not None else ""
    return f"{c['verdict']} {c['mechanism'] or '-'}{hits} {c['time']:.1f}s"


def format_table(matrix: dict) -> str:
    names = matrix["checks"]
    rows = [["KERNEL", "RELEASE", "BOOT", *names]]
    for k in matrix["kernels"]:
        boot = k["timings"].get("boot")
        rows.append([k["spec"], (k["kernel"] or {}).get("release", "-"),
                     f"{boot:.1f}s" if boot is not None else "-",
                     *[_cell(c) for c in k["checks"]]])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    passed = sum(c["verdict"] == "pass" for k in matrix["kernels"] for c in k["checks"])
    skipped = sum(c["verdict"] == "skip" for k in matrix["kernels"] for c in k["checks"])
    total = sum(len(k["checks"]) for k in matrix["kernels"])
    lines.append(f"{matrix['verdict'].upper()}: {passed}/{total} checks passed"
                 + (f" ({skipped} skipped: not for that kernel)" if skipped else "") + " on "
                 f"{len(matrix['kernels'])} kernel(s) in {matrix['wall_time']:.1f}s "
                 f"with {matrix['jobs']} worker(s)")
    for k in matrix["kernels"]:
        if k["error"]:
            lines.append(f"\n{k['spec']}: {k['error']}")
        for c in k["checks"]:
            if c["verdict"] == "fail":
                lines.append(f"\n{k['spec']} {c['name']}:\n{c['summary']}")
            elif c["verdict"] == "error" and c.get("report") is not None:
                lines.append(f"\n{k['spec']} {c['name']}: {c['error']}")
    return "\n".join(lines)


def write_json(matrix: dict, path: Path) -> None:
    data = {**matrix, "kernels": [{**k, "checks": [{key: v for key, v in c.items() if key != "summary"}
                                                   for c in k["checks"]]} for k in matrix["kernels"]]}
    path.write_text(json.dumps(data, indent=2) + "\n")


def junit_cases(matrix: dict) -> list[junit.TestCase]:
    cases = []
    for k in matrix["kernels"]:
        release = (k["kernel"] or {}).get("release", "")
        for c in k["checks"]:
            status = {"pass": "pass", "fail": "fail", "skip": "skip"}.get(c["verdict"], "error")
            if status == "fail":
                failed = [x for x in (c["report"] or {}).get("checks", []) if x["ok"] is False]
                message = "; ".join(f"{x['name']}: {x['detail']}".rstrip(": ") for x in failed) \
                    or "the probe check failed"
                text = c.get("summary", "")
            elif status == "error":
                message = (c["error"] or "error").splitlines()[0]
                text = c["error"] or ""
            elif status == "skip":
                message, text = (c["report"] or {}).get("skipped") or "skipped", ""
            else:
                message, text = "", ""
            props = {"release": release, "offset": c.get("offset", ""),
                     "post_handler": c.get("post_handler", ""),
                     "expected_mechanism": c.get("expected_mechanism") or "",
                     "mechanism": c.get("mechanism") or "", "hits": c.get("hits")}
            cases.append(junit.TestCase(
                classname=k["spec"], name=c["name"], time=c.get("time") or 0.0, status=status,
                message=message, text=text, system_out=c.get("console_tail") or "",
                properties={key: "" if v is None else str(v) for key, v in props.items()}))
    return cases


def write_junit(matrix: dict, path: Path) -> None:
    junit.write(path, "vmprobe matrix", junit_cases(matrix), time=matrix["wall_time"])

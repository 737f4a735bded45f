"""``--repeat N``: N load → trigger → unload cycles of a probe check on one VM, with memory figures.

The first cycle is the whole check (``check/probe.py``); the others are the
same check without the SysRq and register steps: each still proves the probe
listed then gone and the site armed then restored. After every cycle (and
once before the first) the guest's memory is read: ``MemAvailable`` and the
unreclaimable slab (``SUnreclaim``) from ``/proc/meminfo`` after dropping the
page cache, and the slab caches named after the module (``/proc/slabinfo``)
where it has any of its own. The leak verdict is on ``SUnreclaim`` (what a
``kmalloc`` that is never freed grows): its least-squares slope over the
cycles after the first (the first load warms caches up) must stay under
``threshold_kb`` KiB per cycle. When the kernel has kmemleak, it is scanned
after the last cycle and what it reports is a finding.
"""
from __future__ import annotations

import dataclasses
import re
import time

from vmprobe.check import findings as _findings
from vmprobe.check.probe import ProbeCheck, ProbeOptions
from vmprobe.check.report import ProbeReport
from vmprobe.errors import VmprobeError
from vmprobe.modules import Module
from vmprobe.vm.machine import Machine

#: the leak threshold: SUnreclaim growth per cycle (KiB, least-squares slope after the first cycle)
LEAK_THRESHOLD_KB = 16.0
KMEMLEAK = "/sys/kernel/debug/kmemleak"
_MEM_SCRIPT = ("sync; echo 3 > /proc/sys/vm/drop_caches; "
               "grep -E '^(MemAvailable|Slab|SUnreclaim):' /proc/meminfo; echo @; "
               "cat /proc/slabinfo 2>/dev/null")


def memory(machine: Machine, module: str) -> dict:
    """Memory figures now: MemAvailable, Slab, SUnreclaim (KiB) and the module's own slab caches."""
    out = machine.run(_MEM_SCRIPT, 30).stdout
    meminfo, _, slabinfo = out.partition("@\n")
    figures: dict = {}
    for line in meminfo.splitlines():
        m = re.match(r"(\w+):\s+(\d+) kB", line)
        if m:
            figures[{"MemAvailable": "mem_available_kb", "Slab": "slab_kb",
                     "SUnreclaim": "sunreclaim_kb"}[m[1]]] = int(m[2])
    own = {}
    for line in slabinfo.splitlines():
        fields = line.split()
        if len(fields) > 3 and module.lower() in fields[0].lower() and fields[1].isdigit():
            own[fields[0]] = round(int(fields[1]) * int(fields[3]) / 1024, 1)   # active objs × size
    figures["module_slabs_kb"] = own
    return figures


def slope(values: list[float]) -> float:
    """Least-squares slope of ``values`` against their index (0 for fewer than two)."""
    n = len(values)
    if n < 2:
        return 0.0
    mx, my = (n - 1) / 2, sum(values) / n
    return sum((i - mx) * (v - my) for i, v in enumerate(values)) / sum((i - mx) ** 2 for i in range(n))


def leak_verdict(cycles: list[dict], threshold_kb: float) -> dict:
    """The leak verdict over the cycles' ``sunreclaim_kb`` (cycle 1 excluded: the first load warms up)."""
    series = [c["sunreclaim_kb"] for c in cycles if c.get("sunreclaim_kb") is not None]
    if len(series) < 3:
        return {"verdict": "unknown", "metric": "SUnreclaim", "threshold_kb_per_cycle": threshold_kb,
                "detail": f"{len(series)} cycles measured: at least 3 are needed"}
    used = series[1:]
    per_cycle = slope(used)
    avail = [c["mem_available_kb"] for c in cycles[1:] if c.get("mem_available_kb") is not None]
    leak = per_cycle > threshold_kb
    return {"verdict": "leak" if leak else "no leak", "metric": "SUnreclaim",
            "threshold_kb_per_cycle": threshold_kb, "growth_kb_per_cycle": round(per_cycle, 1),
            "growth_kb": used[-1] - used[0],
            "mem_available_kb_per_cycle": round(-slope(avail), 1) + 0.0 if len(avail) > 1 else None,
            "detail": f"SUnreclaim {'+' if per_cycle >= 0 else ''}{per_cycle:.1f} KiB/cycle over cycles "
                      f"2..{len(series)} (threshold {threshold_kb:g} KiB/cycle)"}


def _cycle_entry(index: int, report: ProbeReport, seconds: float, error: VmprobeError | None,
                 mem: dict) -> dict:
    return {"cycle": index, "verdict": "error" if error else report.verdict, "seconds": round(seconds, 2),
            "failed": [c.name for c in report.checks if c.ok is False],
            "mechanism": report.probe.get("mechanism"), "hits": report.hits,
            "findings": [f["title"] for f in report.findings],
            "error": error.render() if error else None, **mem}


def run_cycles(machine: Machine, module: Module, options: ProbeOptions, first: ProbeReport,
               first_seconds: float, first_error: VmprobeError | None, before: dict, n: int,
               threshold_kb: float = LEAK_THRESHOLD_KB, log=None) -> VmprobeError | None:
    """Cycles 2..n after ``first`` (cycle 1); fills ``first.cycles``, ``.leak``, findings and checks.
    Returns the vmprobe error that ended a cycle early (the VM is then not trusted for more)."""
    log = log or (lambda msg: None)
    first.cycles = []
    error = first_error
    if error is None:
        first.cycles.append(_cycle_entry(1, first, first_seconds, None, memory(machine, module.name)))
    light = dataclasses.replace(options, sysrq=False, registers=False)
    for i in range(2, n + 1):
        if error is not None:
            break
        check = ProbeCheck(machine, module, light, log=log)
        t0 = time.monotonic()
        try:
            check.run()
        except VmprobeError as exc:
            error = exc
        mem = {} if error else memory(machine, module.name)
        first.cycles.append(_cycle_entry(i, check.report, time.monotonic() - t0, error, mem))
        first.findings = _findings.merge(first.findings, check.report.findings)
        first.crashes += check.report.crashes
        log(f"vmprobe: cycle {i}/{n}: {first.cycles[-1]['verdict']}"
            + (f", SUnreclaim {mem.get('sunreclaim_kb')} kB" if mem else ""))
    done = first.cycles
    first.leak = {**leak_verdict(done, threshold_kb), "before": before}
    if error is None:
        first.findings = _findings.merge(first.findings, kmemleak_scan(machine, module.name))
    passed = sum(c["verdict"] == "pass" for c in done)
    first.check(f"{n} load/unload cycles", passed == n and error is None,
                f"{passed}/{n} passed" + ("" if error is None else f"; stopped: {error.message}"))
    first.check("no memory leak", first.leak["verdict"] != "leak" if first.leak["verdict"] != "unknown" else None,
                first.leak["detail"])
    return error


def kmemleak_scan(machine: Machine, module: str, wait: float = 6.0) -> list[dict]:
    """kmemleak's unreferenced objects as findings (none when the kernel has no kmemleak).

    kmemleak reports an object only once it is older than 5 s and a scan found no
    reference to it: the scan runs, waits, and runs again."""
    have = machine.run(f"test -e {KMEMLEAK}", 15).status == 0
    if not have:
        return []
    machine.run(f"echo scan > {KMEMLEAK}", 120)
    time.sleep(wait)
    machine.run(f"echo scan > {KMEMLEAK}", 120)
    text = machine.run(f"cat {KMEMLEAK}", 60).stdout
    return parse_kmemleak(text, module)


_SKIP_FRAME = re.compile(r"_*k[mzv]alloc\w*|_*kmem_cache\w*|\w*slab\w*|_*kmemleak\w*|\w*kprobe\w*"
                         r"|\w*ftrace\w*|\w*int3\w*|asm_exc_\w+|exc_\w+")


def parse_kmemleak(text: str, module: str = "") -> list[dict]:
    """Findings from ``/sys/kernel/debug/kmemleak``: one per guilty function (``count``: objects)."""
    out: dict[str, dict] = {}
    for block in re.split(r"(?m)^unreferenced object ", text)[1:]:
        # a frame is "name+0x…/0x…" or, for code unloaded since (a module's), its bare address
        frames = [m[1] or "" for m in re.finditer(r"\[<[0-9a-f]+>\] (?:([A-Za-z_][\w.]*)\+0x|0x)", block)]
        func = next((f.split(".")[0] for f in frames if not _SKIP_FRAME.fullmatch(f.split(".")[0])), None)
        mine = module and module in block
        if func == "":
            func, title = None, "kmemleak: memory leak in unloaded module code"
        else:
            title = f"kmemleak: memory leak in {func}" if func else "kmemleak: memory leak"
        if title not in out:
            out[title] = {"title": title, "kind": "kmemleak", "function": func, "allowed_by": None,
                          "excerpt": ("unreferenced object " + block)[:2000], "count": 0, "module": bool(mine)}
        out[title]["count"] += 1
    return list(out.values())

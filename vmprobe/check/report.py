"""The probe check's result: a verdict, what was measured, and why it failed."""
from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from vmprobe.check import findings as _findings


@dataclass
class Check:
    name: str
    ok: bool | None          # None: skipped
    detail: str = ""


@dataclass
class ProbeReport:
    kernel: dict = field(default_factory=dict)
    probe: dict = field(default_factory=dict)
    bytes: dict = field(default_factory=dict)
    hits: int | None = None
    probes: list[dict] = field(default_factory=list)   # every probe the module registered
    module: dict = field(default_factory=dict)         # what the module asked for, its kernel lines
    hits_counter: str | None = None                    # how hits were counted
    evidence: list[str] = field(default_factory=list)  # what proved the probe: list/sysrq-listing, bytes, hits
    registers_at_hit: dict = field(default_factory=dict)
    sysrq: dict = field(default_factory=dict)
    crashes: list[dict] = field(default_factory=list)
    findings: list[dict] = field(default_factory=list)   # splats the kernel lived on after (findings.py)
    cycles: list[dict] = field(default_factory=list)     # --repeat: one entry per load/unload cycle
    leak: dict = field(default_factory=dict)             # --repeat: the memory verdict
    checks: list[Check] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    machine: dict = field(default_factory=dict)
    error: str | None = None
    repro: dict = field(default_factory=dict)   # inputs to run the same check again (vmprobe repro)
    scenario: dict = field(default_factory=dict)  # a scenario's name and evidence (check/scenarios/)
    skipped: str | None = None   # why the check could not apply to this kernel (verdict "skip")

    @contextlib.contextmanager
    def timed(self, name: str):
        """Time one phase of a check into ``timings`` (a phase that runs again adds up)."""
        t0 = time.monotonic()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0) + time.monotonic() - t0

    def check(self, name: str, ok: bool | None, detail: str = "") -> bool:
        self.checks.append(Check(name, ok, detail))
        return bool(ok)

    @property
    def verdict(self) -> str:
        failed = (any(c.ok is False for c in self.checks) or self.crashes or self.error
                  or _findings.unallowed(self.findings))
        return "fail" if failed else "skip" if self.skipped else "pass"

    def to_dict(self) -> dict:
        return {
            "verdict": self.verdict,
            "kernel": self.kernel,
            "probe": self.probe,
            "bytes": self.bytes,
            "hits": self.hits,
            "hits_counter": self.hits_counter,
            "evidence": self.evidence,
            "probes": self.probes or self._first_probe(),
            "module": self.module,
            "registers_at_hit": self.registers_at_hit,
            "sysrq": self.sysrq,
            "crashes": self.crashes,
            "findings": self.findings,
            **({"cycles": self.cycles, "leak": self.leak} if self.cycles else {}),
            "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in self.checks],
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
            "machine": self.machine,
            "error": self.error,
            "repro": self.repro,
            **({"scenario": self.scenario} if self.scenario else {}),
            **({"skipped": self.skipped} if self.skipped else {}),
        }

    def _first_probe(self) -> list[dict]:
        """The built-in module's one probe, in the shape of a ``probes`` entry."""
        p = self.probe
        if not p.get("address"):
            return []
        return [{"symbol": p.get("symbol"), "offset": p.get("offset"), "address": p.get("address"),
                 "kind": "kprobe", "mechanism": p.get("mechanism"),
                 "bytes": {k: self.bytes.get(k, "") for k in ("before", "armed", "after")},
                 "hits": self.hits, "list_flags": p.get("list_flags")}]

    def write_json(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    def summary(self) -> str:
        p, b = self.probe, self.bytes
        lines = [
            f"vmprobe probe: {self.verdict.upper()}  kernel {self.kernel.get('release')} "
            f"({self.kernel.get('arch')}, {self.machine.get('accel')})"]
        if p:
            flags = "" if self.scenario else f"  list flags {p.get('list_flags')}"
            lines += [f"  probe     {p.get('symbol')}+{p.get('offset')} at {p.get('address')}"
                      f"  mechanism {p.get('mechanism')}{flags}",
                      f"  bytes     before {b.get('before', '')[:20]}  armed {b.get('armed', '')[:20]}"
                      f"  after {b.get('after', '')[:20]}"]
        if not self.scenario:   # a scenario's own figures are in its evidence lines
            lines.append(f"  hits      {self.hits}" + (f" ({self.hits_counter})" if self.hits_counter else "")
                         + f"   registers at hit {self.registers_at_hit or '-'}")
        else:
            lines.append(f"  scenario  {self.scenario.get('name')}: {self.scenario.get('claim', '')}")
            for side, what in self.scenario.get("evidence", {}).items():
                lines.append(f"  evidence  {side}: {what}")
        if self.evidence or p.get("listing"):
            why = (p.get("listing") or {}).get("why_no_list")
            lines.append(f"  evidence  {', '.join(self.evidence) or 'none'}" + (f"  (no kprobes/list: {why})" if why else ""))
        if self.probes:
            lines.append(f"  probes    {len(self.probes)} registered by {self.probe.get('module')}")
            for e in self.probes:
                b = e.get("bytes", {})
                moved = f" (armed at +{e['list_offset']:#x})" if e.get("moved_by") else ""
                lines.append(f"    {e.get('kind')} {e.get('symbol')}+{e.get('offset'):#x} at {e.get('address')}{moved}"
                             f"  {e.get('mechanism')}  flags {e.get('list_flags')}  hits {e.get('hits')}"
                             + (f" (entry {e['entry_hits']})" if e.get("entry_hits") is not None else ""))
                if e.get("description"):
                    lines.append(f"      {e['description']}")
                lines.append(f"      bytes before {b.get('before', '')[:16] or '-'}  armed "
                             f"{b.get('armed', '')[:16]}  after {b.get('after', '')[:16]}")
        kernel_lines = self.module.get("kernel_lines") or []
        if kernel_lines:
            lines.append("  module's kernel lines:")
            lines.extend(f"    {line}" for line in kernel_lines[-12:])
        for c in self.checks:
            mark = {True: "ok  ", False: "FAIL", None: "skip"}[c.ok]
            lines.append(f"  [{mark}] {c.name}" + (f": {c.detail}" if c.detail else ""))
        for crash in self.crashes:
            lines.append(f"  CRASH {crash['title']}")
        lines.extend(_findings.summary_lines(self.findings))
        if self.cycles:
            lines.append(f"  cycles    {len(self.cycles)}: "
                         f"{sum(c.get('verdict') == 'pass' for c in self.cycles)} passed; "
                         f"leak: {self.leak.get('verdict')} ({self.leak.get('detail', '')})")
        if self.error:
            lines.append(f"  ERROR {self.error}")
        total = sum(self.timings.values())
        lines.append("  timings   " + " ".join(f"{k}={v:.2f}s" for k, v in self.timings.items())
                     + f" (total {total:.1f}s)")
        return "\n".join(lines)

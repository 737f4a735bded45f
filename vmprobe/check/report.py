"""The probe check's result: a verdict, what was measured, and why it failed."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from vmprobe.check import findings as _findings

split_findings = _findings.split   # (crashes, findings) of a console's reports


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

    def check(self, name: str, ok: bool | None, detail: str = "") -> bool:
        self.checks.append(Check(name, ok, detail))
        return bool(ok)

    @property
    def verdict(self) -> str:
        failed = (any(c.ok is False for c in self.checks) or self.crashes or self.error
                  or _findings.unallowed(self.findings))
        return "fail" if failed else "pass"

    def to_dict(self) -> dict:
        return {
            "verdict": self.verdict,
            "kernel": self.kernel,
            "probe": self.probe,
            "bytes": self.bytes,
            "hits": self.hits,
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
        }

    def write_json(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    def summary(self) -> str:
        p, b = self.probe, self.bytes
        lines = [
            f"vmprobe probe: {self.verdict.upper()}  kernel {self.kernel.get('release')} "
            f"({self.kernel.get('arch')}, {self.machine.get('accel')})",
            f"  probe     {p.get('symbol')}+{p.get('offset')} at {p.get('address')}"
            f"  mechanism {p.get('mechanism')}  list flags {p.get('list_flags')}",
            f"  bytes     before {b.get('before', '')[:20]}  armed {b.get('armed', '')[:20]}"
            f"  after {b.get('after', '')[:20]}",
            f"  hits      {self.hits}   registers at hit {self.registers_at_hit or '-'}",
        ]
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

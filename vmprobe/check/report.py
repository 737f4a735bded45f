"""The probe check's result: a verdict, what was measured, and why it failed."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path


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
    checks: list[Check] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    machine: dict = field(default_factory=dict)
    error: str | None = None
    repro: dict = field(default_factory=dict)   # inputs to run the same check again (vmprobe repro)
    scenario: dict = field(default_factory=dict)  # a scenario's name and evidence (check/scenarios/)
    skipped: str | None = None   # why the check could not apply to this kernel (verdict "skip")

    def check(self, name: str, ok: bool | None, detail: str = "") -> bool:
        self.checks.append(Check(name, ok, detail))
        return bool(ok)

    @property
    def verdict(self) -> str:
        failed = any(c.ok is False for c in self.checks) or self.crashes or self.error
        return "fail" if failed else "skip" if self.skipped else "pass"

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
            "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in self.checks],
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
            "machine": self.machine,
            "error": self.error,
            "repro": self.repro,
            **({"scenario": self.scenario} if self.scenario else {}),
            **({"skipped": self.skipped} if self.skipped else {}),
        }

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
            lines.append(f"  hits      {self.hits}   registers at hit {self.registers_at_hit or '-'}")
        else:
            lines.append(f"  scenario  {self.scenario.get('name')}: {self.scenario.get('claim', '')}")
            for side, what in self.scenario.get("evidence", {}).items():
                lines.append(f"  evidence  {side}: {what}")
        for c in self.checks:
            mark = {True: "ok  ", False: "FAIL", None: "skip"}[c.ok]
            lines.append(f"  [{mark}] {c.name}" + (f": {c.detail}" if c.detail else ""))
        for crash in self.crashes:
            lines.append(f"  CRASH {crash['title']}")
        if self.error:
            lines.append(f"  ERROR {self.error}")
        total = sum(self.timings.values())
        lines.append("  timings   " + " ".join(f"{k}={v:.2f}s" for k, v in self.timings.items())
                     + f" (total {total:.1f}s)")
        return "\n".join(lines)

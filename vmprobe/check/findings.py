"""Findings: the splats a check saw (reports the kernel lived on after) and what allows them.

A WARNING, "BUG: sleeping function called from invalid context", a lockdep or
KASAN report, a kmemleak leak, an RCU stall or a hung task does not end a
check (``Crash.is_splat``): the check goes on to its end (rmmod, the restored
bytes) and the report keeps each such report as a *finding*. The verdict is
``fail`` unless every finding is allowed by a rule: a regex searched in the
finding's title (``--allow-splat REGEX``, ``[tool.vmprobe] allow_splats``,
``@pytest.mark.allow_splat(REGEX)``). Each finding says which rule allowed it.
Fatal crashes stay crashes.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

from vmprobe.formats.crash import Crash


@dataclass(frozen=True)
class AllowRule:
    """A regex (searched in a finding's title) and where it came from (``--allow-splat``, …)."""
    pattern: str
    source: str

    def matches(self, title: str) -> bool:
        return re.search(self.pattern, title) is not None

    def label(self) -> str:
        return f"{self.source} {self.pattern!r}"


def rules(patterns: Iterable[str], source: str) -> list[AllowRule]:
    """AllowRules from regexes; a bad regex is a ValueError naming it and its source."""
    out = []
    for p in patterns:
        try:
            re.compile(p)
        except re.error as exc:
            raise ValueError(f"{source}: {p!r} is not a regular expression: {exc}") from None
        out.append(AllowRule(p, source))
    return out


def split(crashes: Iterable[Crash]) -> tuple[list[dict], list[dict]]:
    """(crashes, findings) as report dicts: splats the kernel lived on after are findings."""
    hard, found = [], []
    for c in crashes:
        if c.is_splat:
            found.append(finding(c))
        else:
            hard.append(c.to_dict())
    return hard, merge(found)   # a splat printed on every hit is one finding, with its count


def finding(c: Crash) -> dict:
    return {"title": c.title, "kind": c.splat, "function": c.function, "allowed_by": None,
            "excerpt": c.excerpt}


def allow(findings: list[dict], allow_rules: Iterable[AllowRule]) -> list[dict]:
    """Mark each finding with the first rule that allows it (``allowed_by``), in place."""
    allow_rules = list(allow_rules)
    for f in findings:
        rule = next((r for r in allow_rules if r.matches(f["title"])), None)
        f["allowed_by"] = rule.label() if rule else None
    return findings


def unallowed(findings: Iterable[dict]) -> list[dict]:
    return [f for f in findings if not f.get("allowed_by")]


def summary_lines(findings: Iterable[dict]) -> list[str]:
    lines = []
    for f in findings:
        how = f"allowed by {f['allowed_by']}" if f.get("allowed_by") else "not allowed"
        count = f" (×{f['count']})" if f.get("count", 1) > 1 else ""
        lines.append(f"  SPLAT {f['title']}{count} [{f['kind']}]: {how}")
    return lines


def merge(*groups: Iterable[dict]) -> list[dict]:
    """Findings of several cycles, one per title (``count``: how many times it was seen)."""
    out: dict[str, dict] = {}
    for group in groups:
        for f in group:
            if f["title"] in out:
                out[f["title"]]["count"] = out[f["title"]].get("count", 1) + f.get("count", 1)
            else:
                out[f["title"]] = dict(f)
    return list(out.values())

"""Kernel crash reports found in console text, from one table of formats.

Each row: a kind, a regex that starts a report (its first group feeds the
title), whether the report means the kernel is dead (waits stop at once), and
how the title is written. The excerpt runs from the start line to the end
marker (``---[ end trace``) or a bounded number of lines.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

# (kind, start regex, fatal, title format)
FORMATS: list[tuple[str, str, bool, str]] = [
    ("panic", r"Kernel panic - not syncing: ?(.*)", True, "kernel panic: {0}"),
    ("bug", r"kernel BUG at (\S+?)!?$", False, "kernel BUG at {0}"),
    ("bug", r"BUG: (unable to handle page fault|kernel NULL pointer dereference).*", False, "BUG: {0}"),
    ("bug", r"BUG: (soft lockup|workqueue lockup).*", False, "BUG: {0}"),
    ("bug", r"BUG: (.+)", False, "BUG: {0}"),
    ("gpf", r"general protection fault(.*)", False, "general protection fault"),
    ("invalid-opcode", r"invalid opcode: (.*)", False, "invalid opcode"),
    ("oops", r"Oops: (.*)", False, "Oops: {0}"),
    ("warning", r"WARNING: CPU: \d+ PID: \d+ at (\S+)", False, "WARNING at {0}"),
    ("stall", r"INFO: (rcu_\w+ (?:self-)?detected (?:cpu )?stalls?).*", False, "INFO: {0}"),
    ("hung", r"INFO: task (\S+) blocked for more than", False, "INFO: task hung: {0}"),
    ("kprobe", r"(Unrecoverable kprobe detected).*", False, "{0}"),
]
_COMPILED = [(k, re.compile(r"(?:^|\]\s)" + rx, re.M), fatal, title) for k, rx, fatal, title in FORMATS]
_END = re.compile(r"---\[ end (?:trace|Kernel panic)")
_RIP = re.compile(r"\b(?:RIP|EIP|pc) ?: (?:[0-9a-f]{4}:)?(?:\[<[0-9a-f]+>\]\s*)?([A-Za-z_][\w.]*)\+0x")
MAX_LINES = 60


@dataclass
class Crash:
    kind: str
    title: str
    fatal: bool
    function: str | None = None
    excerpt: str = ""
    offset: int = 0
    frames: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def find_crashes(text: str) -> list[Crash]:
    """All crash reports in ``text``, in order; overlapping starts are one report."""
    hits = []
    for kind, rx, fatal, title in _COMPILED:
        for m in rx.finditer(text):
            hits.append((m.start(), kind, fatal, title.format(*(g.strip() for g in m.groups())), m))
    hits.sort(key=lambda h: h[0])
    crashes: list[Crash] = []
    covered_until = -1
    for start, kind, fatal, title, m in hits:
        if start < covered_until:
            if fatal and crashes:  # a panic inside a report makes the report fatal
                crashes[-1].fatal = True
            continue
        line_start = text.rfind("\n", 0, start) + 1
        lines = text[line_start:].splitlines()[:MAX_LINES]
        excerpt_lines = []
        for line in lines:
            excerpt_lines.append(line)
            if _END.search(line):
                break
        excerpt = "\n".join(excerpt_lines)
        covered_until = line_start + len(excerpt)
        rip = _RIP.search(excerpt)
        frames = re.findall(r"^\s*(?:\[[^\]]*\]\s*)*\s*(?:\? )?([a-zA-Z_][\w.]*)\+0x[0-9a-f]+/0x[0-9a-f]+",
                            excerpt, re.M)
        crashes.append(Crash(kind, title, fatal, rip[1] if rip else None, excerpt, line_start, frames))
    return crashes


def first_fatal(text: str) -> Crash | None:
    return next((c for c in find_crashes(text) if c.fatal), None)

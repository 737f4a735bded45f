"""Where a kernel lists its kprobes, and so what a probe check can prove with.

* debugfs ``kprobes/list`` (from 2.6.2x): the probe's address and flags.
* the SysRq "show kprobes" key — the 2.6-era article's patch, or vmprobe's
  (kernels/patches/0001-sysrq-show-kprobes.patch, on 'K'): the address and the handler.
  A kernel has it when its SysRq help names it; no key is pressed otherwise
  (SysRq-K is SAK on a mainline kernel: it kills the console's processes).
* neither (a kernel before the list, no debugfs, or debugfs not mounted): the
  check proves the probe by the bytes at the site (before / armed / after, read
  through the gdbstub) and by the handler's hits alone, and says so.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass

from vmprobe.errors import CommandTimeout
from vmprobe.formats.kprobes_list import ProbeRecord, parse_debugfs_list, parse_sysrq_listing
from vmprobe.vm.machine import Machine

KPROBES_LIST = "/sys/kernel/debug/kprobes/list"
DEBUGFS = "kprobes/list"   # the listing's source names, as in the report's "evidence"
SYSRQ = "sysrq-listing"

_HELP = re.compile(r"sysrq: HELP|SysRq : HELP")
_MODERN_KEY = re.compile(r"[\w-]*kprobe[\w-]*\((\w)\)", re.I)       # show-kprobes(K)
_OLD_KEY = re.compile(r"\b([a-z-]*kprobe[a-z-]*)\b", re.I)          # shoW-kprobes: the capital


def sysrq_kprobes_key(help_text: str) -> str | None:
    """The key of a "show kprobes" SysRq entry in the kernel's SysRq help, if it has one
    (the help from its HELP marker on: a console may break it into several lines)."""
    marker = _HELP.search(help_text)
    if not marker:
        return None
    rest = help_text[marker.end():]
    m = _MODERN_KEY.search(rest)
    if m:
        return m[1]
    m = _OLD_KEY.search(rest)
    capitals = re.findall(r"[A-Z]", m[1]) if m else []
    return capitals[0].lower() if len(capitals) == 1 else None


def print_file(path: str) -> str:
    """A guest shell command that prints ``path`` with builtins alone (an exec of ``cat`` costs
    ≈10 ms under TCG, and a check reads the list three times); prints nothing if it is missing."""
    return (f'if [ -r {path} ]; then while IFS= read -r _vp_line || [ -n "$_vp_line" ]; '
            f'do printf "%s\\n" "$_vp_line"; done < {path}; fi')


@dataclass
class Listing:
    """The kernel's kprobe listing as this guest has it: ``source`` is DEBUGFS, SYSRQ or None,
    ``why`` says why there is no debugfs list when there is none."""

    m: Machine
    source: str | None
    why: str = ""
    key: str | None = None     # the SysRq key of a SYSRQ listing

    @classmethod
    def find(cls, m: Machine) -> "Listing":
        res = m.run(f"if test -r {KPROBES_LIST}; then echo list; else "   # the usual answer: no grep run
                    "grep -qw debugfs /proc/filesystems && echo fs; grep -qw debugfs /proc/mounts && echo mounted; fi",
                    15)
        said = set(res.stdout.split())
        if "list" in said:
            return cls(m, DEBUGFS)
        why = ("debugfs is mounted but has no kprobes/list (a kernel before it, or kprobes without it)"
               if "mounted" in said else
               "debugfs is not mounted" if "fs" in said else "the kernel has no debugfs (CONFIG_DEBUG_FS)")
        key = cls._sysrq_key(m)
        return cls(m, SYSRQ if key else None, why, key)

    @staticmethod
    def _sysrq_key(m: Machine) -> str | None:
        mark = m.console.mark()
        m.run("echo h > /proc/sysrq-trigger", 15)    # help: names every key, presses none
        try:
            m.console.expect(_HELP.pattern, 10, since=mark, what="the SysRq help line", error=CommandTimeout)
        except CommandTimeout:
            return None
        time.sleep(0.2)
        return sysrq_kprobes_key(m.console.since(mark))

    def records(self) -> list[ProbeRecord]:
        if self.source == DEBUGFS:
            return parse_debugfs_list(self.m.run(print_file(KPROBES_LIST), 15).stdout)
        if self.source == SYSRQ:
            mark = self.m.console.mark()
            self.m.run(f"echo {self.key} > /proc/sysrq-trigger", 15)
            self.m.console.expect(r"[Ss]how[ -][Kk]probes", 10, since=mark, error=CommandTimeout,
                                  what=f"the header of SysRq-{self.key} (show kprobes)")
            time.sleep(0.5)    # its lines follow the header
            return parse_sysrq_listing(self.m.console.since(mark))
        return []

    def record(self, address: int) -> ProbeRecord | None:
        return next((r for r in self.records() if r.address == address), None)

    @property
    def name(self) -> str:
        return f"the SysRq-{self.key} listing" if self.source == SYSRQ else "kprobes/list"

    def to_dict(self) -> dict:
        return {"source": self.source, **({"key": self.key} if self.key else {}),
                **({"why_no_list": self.why} if self.why else {})}

    def absent(self) -> str:
        """Why there is no list, for a check that cannot use one."""
        return f"no {KPROBES_LIST} ({self.why}) and no SysRq show-kprobes key"

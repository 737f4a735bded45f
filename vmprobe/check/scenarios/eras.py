"""Kernel-era quirks the scenarios depend on, keyed by version ranges (one row each).

The module templates decide the same things in C by ``LINUX_VERSION_CODE``
(``templates/scenarios/scenario.h``); this table is the host's side: whether
a scenario applies to a kernel at all, and why not.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

Version = tuple[int, int]


@dataclass(frozen=True)
class Quirk:
    name: str
    since: Version | None   # first version that has it (None: always had it)
    until: Version | None   # first version without it (None: still there)
    about: str

    def holds(self, version: Version) -> bool:
        return ((self.since is None or version >= self.since)
                and (self.until is None or version < self.until))


QUIRKS = {q.name: q for q in (
    Quirk("fault_handler", None, (5, 14),
          "struct kprobe.fault_handler (removed in 5.14 by ec6aba3d2be1 "
          "\"kprobes: Remove kprobe::fault_handler\")"),
    Quirk("syscall_wrappers", (4, 17), None,
          "pt_regs system-call wrappers (__x64_sys_*, __ia32_sys_*, __arm64_sys_*)"),
)}


def kernel_version(release: str) -> Version:
    """(major, minor) of a kernel release string such as ``6.1.0-57-cloud-amd64``."""
    m = re.match(r"(\d+)\.(\d+)", release)
    if not m:
        raise ValueError(f"not a kernel release: {release!r}")
    return int(m[1]), int(m[2])


def has(release: str, name: str) -> bool:
    return QUIRKS[name].holds(kernel_version(release))


def missing(release: str, needs: tuple[str, ...]) -> str | None:
    """Why a kernel lacks what a scenario needs (None: it has it all)."""
    version = kernel_version(release)
    for name in needs:
        quirk = QUIRKS[name]
        if not quirk.holds(version):
            return f"kernel {release} has no {quirk.about}"
    return None

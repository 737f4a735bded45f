"""Kprobe listings, old and new, parsed to one record.

* debugfs ``/sys/kernel/debug/kprobes/list`` (2.6.2x → today)::

      ffffffff8ca941a0  k  kernel_clone+0x0    [FTRACE]
      ffffffffc0a01010  r  foo+0x4  mymod [DISABLED][OPTIMIZED]

* the 2.6-era SysRq "Show kprobes" line (and vmprobe's patch that brings the
  key back)::

      [<c011ea60>] do_fork+0x0/0x1de	handler_pre+0x0/0x30 [kprobe_example]

  (the probed ``symbol+offset/size``, then the symbolized pre-handler with its
  module; kernels/patches/0001-sysrq-show-kprobes.patch prints exactly this on
  SysRq-K of a 6.1 kernel).
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

_DEBUGFS = re.compile(
    r"^(?P<addr>[0-9a-fA-F]+)\s+(?P<type>[a-z])\s+(?P<sym>[^\s+]+)\+0x(?P<off>[0-9a-fA-F]+)"
    r"(?:\s+(?P<mod>[^\s\[]+))?\s*(?P<flags>(?:\[[A-Z_]+\])*)\s*$")
_SYSRQ = re.compile(
    r"\[<(?P<addr>[0-9a-fA-F]+)>\]\s+(?P<sym>[^\s+]+)\+0x(?P<off>[0-9a-fA-F]+)/0x(?P<size>[0-9a-fA-F]+)"
    r"(?:[ \t]+\[(?P<mod>[^\]]+)\])?"
    r"(?:[ \t]+(?P<handler>[^\s+\[]+)(?:\+0x[0-9a-fA-F]+(?:/0x[0-9a-fA-F]+)?)?"
    r"(?:[ \t]+\[(?P<hmod>[^\]]+)\])?)?")


@dataclass
class ProbeRecord:
    address: int
    symbol: str
    offset: int
    type: str = "k"                 # k: kprobe, r: kretprobe
    module: str | None = None
    flags: list[str] = field(default_factory=list)
    size: int | None = None         # function size (SysRq listing only)
    handler: str | None = None      # handler symbol (vmprobe's SysRq patch)
    handler_module: str | None = None  # the module the handler lives in

    def has(self, flag: str) -> bool:
        return flag in self.flags

    def to_dict(self) -> dict:
        d = asdict(self)
        d["address"] = f"{self.address:#x}"
        return d


def parse_debugfs_list(text: str) -> list[ProbeRecord]:
    records = []
    for line in text.splitlines():
        m = _DEBUGFS.match(line.strip())
        if not m:
            continue
        flags = re.findall(r"\[([A-Z_]+)\]", m["flags"] or "")
        records.append(ProbeRecord(int(m["addr"], 16), m["sym"], int(m["off"], 16), m["type"],
                                   m["mod"], flags))
    return records


def parse_sysrq_listing(text: str) -> list[ProbeRecord]:
    return [ProbeRecord(int(m["addr"], 16), m["sym"], int(m["off"], 16), "k", m["mod"], [],
                        int(m["size"], 16), m["handler"], m["hmod"])
            for m in _SYSRQ.finditer(text)]

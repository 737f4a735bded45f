"""modify-data: a handler writes a field of a kernel object, and rmmod undoes it.

A target process is started in the guest; the module's pre-handler (on the
fork path) writes that task's ``comm`` once and prints the field's address.
Proven from ``/proc/PID/comm`` (the new name, then the old one after rmmod)
and by gdb reading ``TASK_COMM_LEN`` bytes at that address (the same two
names, in the task_struct itself).
"""
from __future__ import annotations

import re

from vmprobe.check.scenarios.base import ScenarioCheck
from vmprobe.errors import VmprobeError

TRIGGER = "/bin/true"
TARGET = "/bin/sleep 600 </dev/null >/dev/null 2>&1 & echo $!"


class ModifyData(ScenarioCheck):
    target: int | None = None

    def _run(self) -> None:
        r = self.report
        symbol = self.fork_symbol()
        out = self.sh(TARGET)
        if not out.isdigit():
            raise VmprobeError(f"could not start the target process: {out!r}")
        self.target = pid = int(out)
        proc = f"cat /proc/{pid}/comm"
        original = self.sh(proc)
        value = f"vmp-{self.nonce[:8]}"
        self.arm(symbol, f"pid={pid} value={value}")
        with self.phase("user-space"):
            mark = self.m.console.mark()
            self.sh(TRIGGER)
            line = self.m.console.expect(rf"vmprobe-data nonce={self.nonce} pid={pid} field=comm addr=([0-9a-f]+) "
                                         rf"size=(\d+) old=([^ ]*) new=(\S*)", 20, since=mark,
                                         what="the handler's line about the field it wrote")
            seen = self.sh(proc)
        address, size = int(line[1], 16), int(line[2])
        r.check("/proc shows the field the handler wrote", seen == value,
                f"/proc/{pid}/comm: {original!r} → {seen!r}")
        with self.phase("gdb-read"):
            raw = self.gdb.read_memory(address, size)
        in_memory = _cstring(raw)
        r.check("gdb reads the new value in the task's memory", in_memory == value,
                f"{size} bytes at {address:#x}: {raw.hex(' ')} = {in_memory!r}")
        self.evidence["user-space"] = f"/proc/{pid}/comm was {original!r}, then {seen!r}"
        self.evidence["gdb"] = f"task_struct.comm at {address:#x} read {in_memory!r} ({raw.hex()})"
        line = self.disarm()
        hits = re.search(r"hits=(\d+) nmissed=(\d+)", line[0]) if line else None
        with self.phase("undone"):
            after = self.sh(proc)
            raw_after = self.gdb.read_memory(address, size)
        r.check("rmmod undoes the write (/proc)", after == original, f"/proc/{pid}/comm: {after!r}")
        r.check("rmmod undoes the write (gdb)", _cstring(raw_after) == original,
                f"{size} bytes at {address:#x} = {_cstring(raw_after)!r}")
        self.evidence["after rmmod"] = f"/proc/{pid}/comm {after!r}; gdb read {_cstring(raw_after)!r}"
        r.scenario.update(pid=pid, field="task_struct.comm", address=f"{address:#x}", original=original,
                          value=value, seen=seen, gdb=in_memory, after=after, gdb_after=_cstring(raw_after),
                          **({"hits": int(hits[1]), "nmissed": int(hits[2])} if hits else {}))

    def cleanup(self) -> None:
        if self.target:
            try:
                self.m.run(f"kill {self.target}", 15)
            except VmprobeError:
                pass


def _cstring(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode(errors="replace")

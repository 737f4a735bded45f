"""modify-register: a kretprobe rewrites a system call's return value.

``geteuid`` is probed (through the arch's syscall wrapper) and its return
value rewritten, for tasks named ``id`` only: ``id -u`` run from a symlink
named ``id`` prints the new value; gdb, at a hardware breakpoint on the real
return address (the handler prints it) conditioned on the new value, reads it
in the return register; after rmmod ``id -u`` prints the real uid again.
"""
from __future__ import annotations

import re
import secrets

from vmprobe.check.scenarios import eras
from vmprobe.check.scenarios.base import ScenarioCheck

BIN = "/tmp/vmprobe-scenario"
COMMAND = f"{BIN}/id -u"    # comm "id": the module rewrites only for this name


class ModifyRegister(ScenarioCheck):
    def _run(self) -> None:
        r, p = self.report, self.m.profile
        wrapped = eras.has(self.m.kernel.release, "syscall_wrappers") and p.syscall_prefix
        symbol = self.symbol_among([f"{p.syscall_prefix}geteuid"] if wrapped else ["sys_geteuid"])
        value = 1000 + secrets.randbelow(50000)
        self.sh(f"mkdir -p {BIN} && ln -sf /bin/busybox {BIN}/id")
        with self.phase("before"):
            real = self.sh(COMMAND)
        self.arm(symbol, f"comm=id value={value}")
        with self.phase("user-space"):
            mark = self.m.console.mark()
            seen = self.sh(COMMAND)
            line = self.m.console.expect(rf"vmprobe-ret nonce={self.nonce} .*?was=(-?\d+) now=(-?\d+) "
                                         rf"retaddr=([0-9a-f]+)", 15, since=mark,
                                         what="the return handler's line")
        retaddr = int(line[3], 16)
        r.check("a guest command sees the rewritten return value", seen == str(value),
                f"`id -u` printed {seen} with the kretprobe (real uid {real}, handler wrote {value})")
        self.evidence["user-space"] = f"`id -u` printed {seen} (real {real}); handler: was={line[1]} now={line[2]}"
        with self.phase("registers"):
            reg = p.return_register
            regs, out = self.break_until(retaddr, f"${reg} == {value}", COMMAND, [reg, p.pc_register])
        r.registers_at_hit = {"names": [reg, p.pc_register], reg: f"{regs[reg]:#x}",
                              "pc": f"{regs[p.pc_register]:#x}", "return_address": f"{retaddr:#x}"}
        r.check("gdb reads the new value in the return register after the handler",
                regs[reg] == value and regs[p.pc_register] == retaddr,
                f"{reg}={regs[reg]} at {p.pc_register}={regs[p.pc_register]:#x} (the return address)")
        self.evidence["gdb"] = (f"{reg}={regs[reg]:#x} ({regs[reg]}) at {p.pc_register}={regs[p.pc_register]:#x},"
                                f" the syscall's return address; that run printed {out}")
        line = self.disarm()
        if line:
            m = re.search(r"returns=(\d+) rewrites=(\d+) nmissed=(\d+)", line[0])
            if m:
                r.scenario.update(returns=int(m[1]), rewrites=int(m[2]), nmissed=int(m[3]))
        with self.phase("after"):
            after = self.sh(COMMAND)
        r.check("the real value is back after rmmod", after == real, f"`id -u` printed {after}")
        self.evidence["after rmmod"] = f"`id -u` printed {after}"
        r.scenario.update(symbol=symbol, value=value, real=real, seen=seen, after=after)

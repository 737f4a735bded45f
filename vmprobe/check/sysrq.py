"""SysRq-W three ways — /proc/sysrq-trigger, the keyboard (QMP send-key) and a BREAK on the
serial console — each proven by the kernel's own header line on the console."""
from __future__ import annotations

from vmprobe.check.report import ProbeReport
from vmprobe.errors import CommandTimeout
from vmprobe.vm import serial_break
from vmprobe.vm.machine import Machine

MARKER = r"sysrq: Show Blocked State"


def _saw(m: Machine, mark: int, what: str) -> bool:
    try:
        m.console.expect(MARKER, 10, since=mark, what=what, error=CommandTimeout)
        return True
    except CommandTimeout:
        return False


def sysrq_three_ways(m: Machine, r: ProbeReport) -> None:
    mark = m.console.mark()
    # then the mask: Debian's default refuses the keyboard's (the /proc path ignores it)
    m.run("echo w > /proc/sysrq-trigger; echo 1 > /proc/sys/kernel/sysrq", 15)
    ok_proc = _saw(m, mark, "SysRq-W through /proc/sysrq-trigger")
    mark = m.console.mark()
    m.qmp.cmd("send-key", keys=[{"type": "qcode", "data": k} for k in ("alt", "sysrq", "w")])
    ok_key = _saw(m, mark, "SysRq-W through QMP send-key")
    mark = m.console.mark()
    serial_break.send_sysrq(serial_break.console_socket(m.console_log), "w",
                            until=lambda: m.console.count(MARKER, since=mark) > 0)
    ok_break = _saw(m, mark, "SysRq-W through a BREAK on the serial console")
    r.sysrq = {"proc": ok_proc, "send_key": ok_key, "serial_break": ok_break}
    r.check("SysRq-W via /proc/sysrq-trigger", ok_proc)
    r.check("SysRq-W via QMP send-key (alt-sysrq-w)", ok_key)
    r.check("SysRq-W via a serial BREAK then w on the console", ok_break)

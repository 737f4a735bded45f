"""fault-handler: ``kprobe.fault_handler`` sees a fault raised inside the pre-handler.

The pre-handler (on the fork path) reads an unmapped user address, ``FAULTS``
times; the kernel's page-fault path asks the running kprobe's fault handler
first (5.10: ``kprobe_page_fault`` → ``kprobe_fault_handler``), which counts
the call and returns 0, so the extable fixup turns the read into -EFAULT.
Proven from the console (the handler's lines and the totals at rmmod), from
gdb (the fault counter read in guest memory), by a command run after the
faults (the kernel survives) and by the site's bytes after rmmod. Kernels
without the field (5.14+) skip, by the era table, before anything is loaded.
"""
from __future__ import annotations

import re

from vmprobe.check.scenarios.base import ScenarioCheck

FAULTS = 3
TRIGGER = "for i in 1 2 3 4 5 6; do /bin/true; done"


class FaultHandler(ScenarioCheck):
    def _run(self) -> None:
        r = self.report
        armed = self.arm(self.fork_symbol(), f"faults={FAULTS}")
        counter = int(re.search(r"counter=([0-9a-f]+)", armed[0])[1], 16)
        has_field = "fault_handler=1" in armed[0]
        r.check("the module installed a fault handler", has_field, armed[0].split("vmprobe-armed ")[-1])
        with self.phase("trigger"):
            mark = self.m.console.mark()
            self.sh(TRIGGER)
            self.m.console.expect(rf"vmprobe-provoked nonce={self.nonce} n={FAULTS} [^\n]*", 20, since=mark,
                                  what=f"the pre-handler's {FAULTS}th provoked fault")
            text = self.m.console.since(mark)
        provoked = re.findall(rf"vmprobe-provoked nonce={self.nonce} n=\d+ read=\w+ ret=(-?\d+)", text)
        calls = re.findall(rf"vmprobe-fault nonce={self.nonce} calls=(\d+) addr=\w+ trapnr=(\d+)", text)
        with self.phase("gdb-counter"):
            in_memory = self.read_word(counter, 4)
        traps = {t for _, t in calls}
        r.check("the fault handler saw every provoked fault", len(provoked) == FAULTS and len(calls) >= FAULTS
                and len(traps) == 1,
                f"{len(provoked)} faults provoked, {len(calls)} fault-handler calls "
                f"(trap {', '.join(sorted(traps)) or '-'})")
        r.check("each faulting read returned -EFAULT", provoked and all(v == "-14" for v in provoked),
                f"ret {', '.join(provoked)}")
        r.check("gdb reads the handler's call counter in guest memory", in_memory == len(calls),
                f"fault_calls at {counter:#x} = {in_memory}")
        with self.phase("survives"):
            alive = self.m.run("echo alive", 30)
        r.check("the kernel survives", alive.status == 0 and alive.stdout.strip() == "alive",
                "a command ran after the faults")
        self.evidence["user-space"] = (f"{TRIGGER!r} ran; {len(provoked)} faulting reads in the pre-handler "
                                       f"returned {', '.join(provoked)}; `echo alive` afterwards: "
                                       f"{alive.stdout.strip()!r}")
        self.evidence["gdb"] = f"the fault counter at {counter:#x} read {in_memory}"
        line = self.disarm()
        totals = {}
        if line:
            totals = {k: int(v) for k, v in re.findall(r"(\w+)=(-?\d+)", line[0]) if k != "nonce"}
            r.check("the totals at rmmod agree", totals.get("fault_calls") == in_memory,
                    f"fault_calls={totals.get('fault_calls')} provoked={totals.get('provoked')} "
                    f"nmissed={totals.get('nmissed')} last_trap={totals.get('last_trap')}")
        r.scenario.update(provoked=len(provoked), fault_calls=in_memory,
                          trapnr=sorted({int(t) for _, t in calls}), nmissed=totals.get("nmissed"))

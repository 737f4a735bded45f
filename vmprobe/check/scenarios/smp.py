"""smp: one handler on every CPU at once, and the race the article speaks of.

A trigger loop is pinned to each CPU (``taskset -c``) and all run at once.
The pre-handler (on the fork path) counts its hits per CPU, in an atomic
counter, and in a plain counter with a racy read-modify-write. The report
gives ``hits_per_cpu`` {cpu: count}, ``nmissed``, and the lost updates
(atomic − plain). It passes when the figures are consistent — every CPU hit,
the per-CPU hits add up to the atomic count, the plain count never exceeds
it, gdb's snapshot of both fits the final figures — whatever the number of
lost updates on a given run: a race is reported, never asserted.
"""
from __future__ import annotations

import re

from vmprobe.check.scenarios.base import ScenarioCheck

FORKS_PER_CPU = 40


def trigger(cpus: int, forks: int = FORKS_PER_CPU) -> str:
    """Shell code running a fork loop pinned to each CPU, all at once; each loop first says
    which CPU it was pinned to and which one its first child ran on (field 39 of stat)."""
    loop = ('echo cpu={c} ran_on=$(cut -d" " -f39 /proc/self/stat); '
            f'i=0; while [ $i -lt {forks} ]; do /bin/true; i=$((i+1)); done')
    return " ".join(f"taskset -c {c} sh -c '{loop.format(c=c)}' &" for c in range(cpus)) + " wait"


class Smp(ScenarioCheck):
    def _run(self) -> None:
        r, cpus = self.report, self.m.smp
        armed = self.arm(self.fork_symbol())
        atomic_at = int(re.search(r"atomic=([0-9a-f]+)", armed[0])[1], 16)
        plain_at = int(re.search(r"plain=([0-9a-f]+)", armed[0])[1], 16)
        online = int(re.search(r"cpus=(\d+)", armed[0])[1])
        with self.phase("trigger"):
            out = self.sh(trigger(online), 300)
        ran = {int(c): int(on) for c, on in re.findall(r"cpu=(\d+) ran_on=(\d+)", out)}
        r.check("a trigger ran pinned to each CPU", sorted(ran) == list(range(online))
                and all(c == on for c, on in ran.items()), f"pinned → ran on: {ran}")
        with self.phase("gdb-snapshot"):
            with self.gdb.stopped():
                threads = len(self.gdb.command("-thread-info")["payload"].get("threads", []))
                snap_atomic, snap_plain = self.read_word(atomic_at), self.read_word(plain_at)
        r.check("gdb sees a vCPU per guest CPU", threads == cpus == online,
                f"{threads} gdb threads, {cpus} vCPUs, {online} CPUs online in the guest")
        r.check("gdb's snapshot: plain ≤ atomic", snap_plain <= snap_atomic,
                f"atomic={snap_atomic} plain={snap_plain}")
        self.evidence["user-space"] = f"{len(ran)} trigger loops of {FORKS_PER_CPU} forks, pinned → ran on {ran}"
        self.evidence["gdb"] = (f"{threads} vCPUs; counters read in memory: atomic={snap_atomic} at "
                                f"{atomic_at:#x}, plain={snap_plain} at {plain_at:#x}")
        mark = self.m.console.mark()
        line = self.disarm()
        text = self.m.console.since(mark)
        per_cpu = {int(c): int(n) for c, n in re.findall(rf"vmprobe-cpu nonce={self.nonce} cpu=(\d+) hits=(\d+)",
                                                         text)}
        totals = dict(re.findall(r"(atomic|plain|nmissed)=(\d+)", line[0])) if line else {}
        atomic, plain = int(totals.get("atomic", -1)), int(totals.get("plain", -1))
        nmissed = int(totals.get("nmissed", -1))
        lost = atomic - plain
        r.check("every CPU hit", len(per_cpu) == online and all(n > 0 for n in per_cpu.values()),
                f"hits_per_cpu {per_cpu}")
        r.check("the per-CPU hits add up to the atomic count", sum(per_cpu.values()) == atomic,
                f"{' + '.join(map(str, per_cpu.values()))} = {sum(per_cpu.values())}, atomic {atomic}")
        r.check("the plain counter never exceeds the atomic one", 0 <= plain <= atomic,
                f"plain {plain}, atomic {atomic}: {lost} lost updates")
        r.check("gdb's snapshot fits the final figures", snap_atomic <= atomic and snap_plain <= atomic,
                f"snapshot atomic {snap_atomic}, plain {snap_plain}; final atomic {atomic}")
        self.evidence["figures"] = f"hits_per_cpu {per_cpu}, atomic {atomic}, plain {plain}, lost {lost}, " \
                                   f"nmissed {nmissed}"
        r.hits = atomic
        r.scenario.update(cpus=online, hits_per_cpu=per_cpu, atomic=atomic, plain=plain, lost_updates=lost,
                          nmissed=nmissed, gdb_snapshot={"atomic": snap_atomic, "plain": snap_plain},
                          pinned=ran)

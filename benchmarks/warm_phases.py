#!/usr/bin/env python3
"""Where a warm start's time goes, phase by phase, in one process (the figures behind issue 16).

For each run: a ``Machine(warm=True)`` is entered, runs ``true`` and is shut down; the
host's phases are timed around the machine's own steps (QEMU started, QMP up, the saved
state loaded and this run's line sent, READY seen, the transport up, the command, the
shutdown), and the guest's time from the line to READY is read from its kernel log
(``/proc/uptime`` is the guest's clock, the line's arrival its ``read`` ending: the first
kernel timestamp after the snapshot point). ``--cold`` times boots instead (then: the
guest's ``Run /init`` and READY). Prints each run and the medians.

Usage: benchmarks/warm_phases.py [--runs 4] [--kernel debian:bookworm] [--accel tcg] [--cold]
"""
from __future__ import annotations

import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import arguments  # noqa: E402

from vmprobe.kernels import get_kernel  # noqa: E402
from vmprobe.vm import machine as machine_module  # noqa: E402
from vmprobe.vm.machine import Machine  # noqa: E402

_STAMP = re.compile(r"^\[\s*([\d.]+)\] (Run /init|VMPROBE-READY)", re.M)


def one_run(kernel, accel: str, cold: bool) -> dict[str, float]:
    marks: dict[str, float] = {}
    real_start, real_resume, real_connect = Machine._start_qemu, Machine._resume, machine_module.transports.connect

    def start_qemu(self, initrd):
        marks.setdefault("until QEMU starts", time.monotonic())
        real_start(self, initrd)
        marks.setdefault("QEMU up to QMP", time.monotonic())

    def resume(self, timeout=60):
        real_resume(self, timeout)
        marks["state loaded, line sent"] = time.monotonic()

    def connect(*args, **kw):
        marks["READY seen"] = time.monotonic()
        return real_connect(*args, **kw)

    Machine._start_qemu, Machine._resume, machine_module.transports.connect = start_qemu, resume, connect
    try:
        t0 = time.monotonic()
        m = Machine(kernel, accel=accel, warm=not cold)
        m.__enter__()
        marks["transport up"] = time.monotonic()
        m.run("true", 30)
        marks["command"] = time.monotonic()
        console = m.console.text
        m.shutdown()
        marks["shutdown"] = time.monotonic()
    finally:
        Machine._start_qemu, Machine._resume, machine_module.transports.connect = real_start, real_resume, real_connect
    phases, prev = {}, t0
    for name, at in sorted(marks.items(), key=lambda kv: kv[1]):
        phases[name] = at - prev
        prev = at
    stamps = {name: float(ts) for ts, name in _STAMP.findall(console)}
    if "VMPROBE-READY" in stamps and "Run /init" in stamps:
        phases["guest: /init to READY"] = stamps["VMPROBE-READY"] - stamps["Run /init"]
    phases["whole"] = prev - t0
    return phases


def main() -> int:
    ap = arguments(__doc__, accel="tcg")
    ap.add_argument("--cold", action="store_true", help="boot instead of restoring")
    args = ap.parse_args()
    kernel = get_kernel(args.kernel)
    one_run(kernel, args.accel, args.cold)   # untimed: the snapshot (and caches) made
    runs = []
    for i in range(args.runs):
        phases = one_run(kernel, args.accel, args.cold)
        runs.append(phases)
        print(f"run {i + 1}: " + ", ".join(f"{k} {v:.3f}" for k, v in phases.items()))
    names = list(dict.fromkeys(k for r in runs for k in r))
    print(f"\nmedians of {args.runs} ({'cold' if args.cold else 'warm'}, {kernel.release}, {args.accel}):")
    for name in names:
        print(f"  {name:28s} {statistics.median(r[name] for r in runs if name in r):.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

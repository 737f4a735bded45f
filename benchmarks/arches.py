#!/usr/bin/env python3
"""Per-architecture figures: boot to SSH, and a whole ``vmprobe probe``, on x86_64, i386, arm64.

For each kernel (median of ``--runs``, all TCG unless ``--accel``):

* boot to READY: QEMU start → the guest's READY marker on the console;
* boot to SSH: QEMU start → an SSH session accepted (what a user waits for);
* full probe: the whole ``vmprobe probe --kernel SPEC`` CLI process (module
  already built and cached): boot, every check of the report, power-off.

Prints a table and writes JSON (``--json``). Usage:
benchmarks/arches.py [--runs 3] [--accel tcg] [--json arches.json]
                     [--kernels debian:bookworm,debian:bookworm/686,debian:bookworm/arm64]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from vmprobe import modules
from vmprobe.arch import profile_for
from vmprobe.kernels import get_kernel
from vmprobe.vm.machine import Machine

DEFAULT_KERNELS = "debian:bookworm,debian:bookworm/686,debian:bookworm/arm64"


def boot(kernel, accel: str) -> tuple[float, float]:
    """(QEMU start → READY, QEMU start → SSH accepted) of one Machine."""
    with Machine(kernel, accel=accel) as m:
        ready = m.timings["boot"]
        ssh = ready + m.timings["ssh"]
        assert m.run("true").status == 0
    return ready, ssh


def full_probe(spec: str, accel: str) -> float:
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "vmprobe", "probe", "--kernel", spec, "--accel", accel],
                          capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    elapsed = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"vmprobe probe --kernel {spec} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--accel", default="tcg")
    ap.add_argument("--kernels", default=DEFAULT_KERNELS)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    rows = []
    for spec in [s.strip() for s in args.kernels.split(",") if s.strip()]:
        kernel = get_kernel(spec)
        modules.build(modules.FORK_PROBE, kernel)  # built once, outside the timings
        boot(kernel, args.accel)                   # warm: rootfs base layer, page cache
        readies, sshs, probes = [], [], []
        for _ in range(args.runs):
            ready, ssh = boot(kernel, args.accel)
            readies.append(ready)
            sshs.append(ssh)
            probes.append(full_probe(spec, args.accel))
        p = profile_for(kernel.arch)
        rows.append({"spec": spec, "release": kernel.release, "arch": p.name, "qemu": p.qemu,
                     "machine": p.machine, "cpu": p.cpu_tcg if args.accel == "tcg" else p.cpu_kvm,
                     "boot_ready_s": statistics.median(readies), "boot_ssh_s": statistics.median(sshs),
                     "probe_s": statistics.median(probes),
                     "runs": {"ready": readies, "ssh": sshs, "probe": probes}})
        print(f"{spec}: ready {rows[-1]['boot_ready_s']:.1f}s, ssh {rows[-1]['boot_ssh_s']:.1f}s, "
              f"probe {rows[-1]['probe_s']:.1f}s", file=sys.stderr, flush=True)
    header = f"{'KERNEL':24} {'ARCH':8} {'BOOT→READY':>11} {'BOOT→SSH':>9} {'FULL PROBE':>11}"
    print(header)
    for r in rows:
        print(f"{r['spec']:24} {r['arch']:8} {r['boot_ready_s']:10.1f}s {r['boot_ssh_s']:8.1f}s "
              f"{r['probe_s']:10.1f}s")
    print(f"(median of {args.runs} runs, {args.accel}; full probe = the whole `vmprobe probe` process, "
          f"module cached)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"accel": args.accel, "runs": args.runs, "kernels": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

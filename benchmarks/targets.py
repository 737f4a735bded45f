#!/usr/bin/env python3
"""The four speed targets of issue 16 item 3, each against the floor measured next to it.

The floor is the same kernel booting a busybox init that prints a marker and
powers off (``-smp 1 -nic none``, ``quiet``): the whole QEMU process. Each
target is timed as a whole CLI process, interleaved with a floor sample
(floor, target, floor, target, …) so load changes on a shared machine hit both
alike; the ratio is median(target) / median(its floors).

* ``cold``:     ``vmprobe exec --cold -- true``              target ≤ 1.3×
* ``warm``:     ``vmprobe exec -- true`` (restored)          target ≤ 0.35×
* ``probe``:    ``vmprobe probe`` (warm, module cached)      target ≤ 1.0×
* ``probe-on``: ``vmprobe probe --on N`` (module cached)     target ≤ 0.3×

Usage: benchmarks/targets.py [--runs 3] [--only cold,warm,probe,probe-on] [--json out.json]
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_common import arguments

from vmprobe import modules
from vmprobe.arch import profile_for
from vmprobe.formats.cpio import NewcArchive
from vmprobe.kernels import get_kernel
from vmprobe.vm.accel import choose_accel

TARGETS = {"cold": 1.3, "warm": 0.35, "probe": 1.0, "probe-on": 0.3}
MARKER = "VMPROBE-FLOOR-MARKER"


def floor(kernel, accel: str) -> float:
    """The floor: QEMU with the kernel and an init that prints a marker and powers off."""
    p = profile_for(kernel.arch)
    a = NewcArchive()
    for d in ("bin", "proc", "dev"):
        a.dir(d)
    a.chardev("dev/console", 5, 1)
    a.file("bin/busybox", Path("/bin/busybox").read_bytes(), 0o755)
    a.file("init", f"#!/bin/busybox sh\n/bin/busybox echo {MARKER}\n/bin/busybox poweroff -f\n".encode(), 0o755)
    with tempfile.TemporaryDirectory(prefix="vmprobe-bench-") as tmp:
        initrd = Path(tmp) / "initrd"
        initrd.write_bytes(a.gzipped())
        log = Path(tmp) / "console.log"
        cmd = [p.qemu, "-M", p.machine, "-accel", accel, "-cpu", p.cpu_kvm if accel == "kvm" else p.cpu_tcg,
               "-smp", "1", "-m", "1G", "-nic", "none", "-display", "none", "-no-user-config",
               "-no-reboot", "-kernel", str(kernel.image_path), "-initrd", str(initrd),
               "-append", f"console={p.console},115200 panic=-1 quiet",
               "-chardev", f"file,id=c,path={log}", "-serial", "chardev:c", "-monitor", "none"]
        t0 = time.monotonic()
        subprocess.run(cmd, check=True, timeout=180, stdin=subprocess.DEVNULL)
        took = time.monotonic() - t0
        if MARKER not in log.read_text(errors="replace"):
            raise SystemExit(f"the floor's init did not print its marker: {log.read_text()[-500:]}")
        return took


def cli(*args: str) -> float:
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-m", "vmprobe", *args], check=True, timeout=600,
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - t0


def main() -> int:
    ap = arguments(__doc__)
    ap.add_argument("--only", default=",".join(TARGETS), help="comma-separated targets")
    args = ap.parse_args()
    wanted = [t for t in args.only.split(",") if t]
    kernel = get_kernel(args.kernel)
    modules.build(modules.FORK_PROBE, kernel)
    accel = choose_accel(args.accel, profile_for(kernel.arch), kernel.image_path)
    common = ("--kernel", args.kernel, "--accel", accel)
    name = f"targets{int(time.time()) % 100000}"
    runs = {"cold": lambda: cli("exec", *common, "--cold", "--", "true"),
            "warm": lambda: cli("exec", *common, "--", "true"),
            "probe": lambda: cli("probe", *common),
            "probe-on": lambda: cli("probe", "--on", name)}
    cli("exec", *common, "--", "true")   # the warm-start snapshot and its kallsyms copy
    if "probe-on" in wanted:
        cli("up", "--name", name, *common)
        cli("probe", "--on", name)       # the supervisor imports the check once
    samples = {t: {"floor": [], "target": []} for t in wanted}
    try:
        for _ in range(args.runs):
            for t in wanted:
                samples[t]["floor"].append(floor(kernel, accel))
                samples[t]["target"].append(runs[t]())
    finally:
        if "probe-on" in wanted:
            subprocess.run([sys.executable, "-m", "vmprobe", "down", name], timeout=120,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print(f"kernel {kernel.release}  accel {accel}  runs {args.runs} (medians; each target interleaved "
          f"with its own floor samples)")
    result = {}
    for t in wanted:
        f, v = statistics.median(samples[t]["floor"]), statistics.median(samples[t]["target"])
        ratio = v / f
        result[t] = {"floor": f, "target": v, "ratio": ratio, "goal": TARGETS[t], **samples[t]}
        print(f"  {t:9} {v:6.2f} s / floor {f:5.2f} s = {ratio:5.2f}x  (target <= {TARGETS[t]}: "
              f"{'met' if ratio <= TARGETS[t] else 'NOT met'})   samples "
              f"{', '.join(f'{x:.2f}' for x in samples[t]['target'])} | floor "
              f"{', '.join(f'{x:.2f}' for x in samples[t]['floor'])}")
    if args.json:
        args.json.write_text(json.dumps({"kernel": kernel.release, "accel": accel, "results": result},
                                        indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

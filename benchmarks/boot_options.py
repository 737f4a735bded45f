#!/usr/bin/env python3
"""What each boot-trimming choice is worth: cold boot to SSH-ready with one choice undone.

Every variant is vmprobe's own cold ``Machine`` (boot → READY → SSH) with one
QEMU or kernel argument changed from the default, run interleaved so load
changes hit all variants alike. Also the raw floor (an init that powers off at
once) on ``-M pc`` and on ``-M microvm`` (which needs ``tsc_early_khz`` under
TCG). Prints medians and each variant's ratio to the default; ``--json`` saves
the samples.

Usage: benchmarks/boot_options.py [--runs 3] [--kernel debian:bookworm] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vmprobe.accel import choose_accel
from vmprobe.arch import profile_for
from vmprobe.cpio import NewcArchive
from vmprobe.kernels import get_kernel
from vmprobe.machine import Machine


def _drop(cmd: list[str], option: str, pattern: str) -> list[str]:
    """``cmd`` without the ``option value`` pairs whose value matches ``pattern``."""
    out, i = [], 0
    while i < len(cmd):
        if cmd[i] == option and i + 1 < len(cmd) and re.search(pattern, cmd[i + 1]):
            i += 2
            continue
        out.append(cmd[i])
        i += 1
    return out


def _edit_append(cmd: list[str], edit) -> list[str]:
    i = cmd.index("-append")
    return cmd[:i + 1] + [edit(cmd[i + 1])] + cmd[i + 2:]


#: variant → how the default QEMU command line changes (None: unchanged)
VARIANTS = {
    "default": None,
    "smp 2": "smp",
    "no virtio-rng": lambda c: _drop(_drop(c, "-object", r"^rng-random"), "-device", r"^virtio-rng"),
    "crypto self-tests on": lambda c: _edit_append(c, lambda a: a.replace(" cryptomgr.notests", "")),
    "quiet console": lambda c: _edit_append(c, lambda a: a + " quiet"),
    "NIC option ROM (iPXE)": lambda c: [a.replace(",romfile=", "") for a in c],
}


class VariantMachine(Machine):
    def __init__(self, *a, edit=None, **kw):
        super().__init__(*a, **kw)
        self._edit = edit

    def _qemu_command(self, initrd, qmp_path):
        cmd = super()._qemu_command(initrd, qmp_path)
        return self._edit(cmd) if self._edit else cmd


def boot_to_ssh(kernel, accel: str, variant) -> float:
    smp = 2 if variant == "smp" else 1
    edit = variant if callable(variant) else None
    t0 = time.monotonic()
    with VariantMachine(kernel, accel=accel, smp=smp, warm=False, edit=edit) as m:
        m.run("true")
        return time.monotonic() - t0


def raw_floor(kernel, accel: str, microvm: bool) -> float:
    p = profile_for(kernel.arch)
    a = NewcArchive()
    for d in ("bin", "proc"):
        a.dir(d)
    a.chardev("dev/console", 5, 1)
    a.file("bin/busybox", Path("/bin/busybox").read_bytes(), 0o755)
    # microvm,acpi=off cannot power off: reboot with -no-reboot ends QEMU the same way
    a.file("init", b"#!/bin/busybox sh\n/bin/busybox reboot -f\n", 0o755)
    khz = _host_tsc_khz()
    machine = ["-M", "microvm,acpi=off"] if microvm else ["-M", "pc"]
    extra = f" reboot=t tsc_early_khz={khz}" if microvm else ""
    with tempfile.TemporaryDirectory(prefix="vmprobe-bench-") as tmp:
        initrd = Path(tmp) / "initrd"
        initrd.write_bytes(a.gzipped())
        cmd = [p.qemu, *machine, "-accel", accel, "-cpu", p.cpu_tcg, "-smp", "1", "-m", "1G",
               "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
               "-kernel", str(kernel.image_path), "-initrd", str(initrd),
               "-append", f"console={p.console},115200 panic=-1 {' '.join(p.append)} "
                          f"cryptomgr.notests{extra}",
               "-chardev", f"file,id=c,path={tmp}/console.log", "-serial", "chardev:c"]
        t0 = time.monotonic()
        subprocess.run(cmd, check=True, timeout=120, stdin=subprocess.DEVNULL)
        return time.monotonic() - t0


def _host_tsc_khz() -> int:
    text = Path("/proc/cpuinfo").read_text()
    mhz = float(re.search(r"cpu MHz\s*:\s*([\d.]+)", text)[1])
    return int(mhz * 1000)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kernel", default="debian:bookworm")
    ap.add_argument("--accel", default="tcg")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    kernel = get_kernel(args.kernel)
    accel = choose_accel(args.accel, profile_for(kernel.arch), kernel.image_path)
    samples: dict[str, list[float]] = {}
    boot_to_ssh(kernel, accel, None)  # page cache, rootfs cache
    for _ in range(args.runs):
        for name, variant in VARIANTS.items():
            samples.setdefault(name, []).append(boot_to_ssh(kernel, accel, variant))
        samples.setdefault("raw floor, -M pc", []).append(raw_floor(kernel, accel, False))
        samples.setdefault("raw floor, -M microvm", []).append(raw_floor(kernel, accel, True))
    med = {k: statistics.median(v) for k, v in samples.items()}
    print(f"kernel {kernel.release}  accel {accel}  runs {args.runs}: cold boot to SSH-ready (medians)")
    for name, value in med.items():
        base = med["raw floor, -M pc"] if name.startswith("raw floor") else med["default"]
        print(f"  {name:28} {value:6.2f} s  {value / base:5.2f}x   "
              f"samples {', '.join(f'{x:.2f}' for x in samples[name])}")
    if args.json:
        args.json.write_text(json.dumps({"kernel": kernel.release, "accel": accel,
                                         "samples": samples, "medians": med}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

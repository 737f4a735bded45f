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

import json
import re
import statistics
import sys
import time

from bench_common import arguments, raw_floor

from vmprobe.arch import profile_for
from vmprobe.kernels import get_kernel
from vmprobe.vm.accel import choose_accel
from vmprobe.vm.machine import Machine


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


def main() -> int:
    args = arguments(__doc__, accel="tcg").parse_args()
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

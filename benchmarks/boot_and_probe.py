#!/usr/bin/env python3
"""Boot and probe timings, all in one run so the ratios are fair.

Prints a table and writes JSON (``--json``). Figures (median of ``--runs``):

* raw floor: the same kernel and QEMU arguments, an initramfs whose init
  powers off at once; wall time of the whole QEMU process;
* ``vmprobe exec -- true``, cold (``--cold``: boot) and warm (restored from the
  kernel's snapshot, made before timing starts): the whole CLI process;
* ``vmprobe probe``, cold and warm: the whole CLI process with the module
  already built;
* restore to SSH: a warm ``Machine`` from process start of QEMU to SSH ready;
* probe cycle on a live VM: insmod → verify → trigger → rmmod → verify, with
  SysRq and the register check off (they are checks, not the cycle);
* SSH handshake: connecting to an already booted guest;
* with ``--matrix``: ``vmprobe matrix`` on the four catalog kernels × three
  checks with 2 workers (warm caches: kernels and build chroots fetched first).

Usage: benchmarks/boot_and_probe.py [--runs 3] [--accel tcg] [--json out.json]
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time

from bench_common import arguments, raw_floor

from vmprobe import modules
from vmprobe.arch import profile_for
from vmprobe.check.probe import ProbeOptions, run_probe_check
from vmprobe.kernels import get_kernel
from vmprobe.vm.accel import choose_accel
from vmprobe.vm.machine import Machine
from vmprobe.vm.ssh import GuestSsh


def cli(*args: str) -> float:
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-m", "vmprobe", *args], check=True, timeout=300,
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - t0


def main() -> int:
    ap = arguments(__doc__)
    ap.add_argument("--matrix", action="store_true", help="also time the four-kernel matrix")
    args = ap.parse_args()
    kernel = get_kernel(args.kernel)
    module = modules.build(modules.FORK_PROBE, kernel)[0]
    accel = choose_accel(args.accel, profile_for(kernel.arch), kernel.image_path)
    samples: dict[str, list[float]] = {k: [] for k in
                                       ("raw_floor", "exec_true_cold", "exec_true_warm", "probe_cold",
                                        "probe_warm", "restore_to_ssh", "ssh_handshake",
                                        "probe_cycle_live")}
    common = ("--kernel", args.kernel, "--accel", accel)
    cli("exec", *common, "--", "true")  # makes the warm-start snapshot (and the kallsyms copy:)
    cli("probe", *common)
    for _ in range(args.runs):  # interleaved, so load changes hit every figure alike
        samples["raw_floor"].append(raw_floor(kernel, accel))
        samples["exec_true_cold"].append(cli("exec", *common, "--cold", "--", "true"))
        samples["exec_true_warm"].append(cli("exec", *common, "--", "true"))
        samples["probe_cold"].append(cli("probe", *common, "--cold"))
        samples["probe_warm"].append(cli("probe", *common))
        with Machine(kernel, accel=accel, warm=True) as w:
            samples["restore_to_ssh"].append(w.timings["boot"] + w.timings["ssh"])
    with Machine(kernel, accel=accel) as m:
        for _ in range(args.runs):
            ssh = GuestSsh(m.ssh_port, m.ssh.keys)
            t0 = time.monotonic()
            ssh.connect(10)
            samples["ssh_handshake"].append(time.monotonic() - t0)
            ssh.close()
        opts = ProbeOptions(offset=5, sysrq=False, registers=False)
        run_probe_check(m, module, opts)  # warm: module copied once, symbols paged in
        for _ in range(args.runs):
            report = run_probe_check(m, module, opts)
            assert report.verdict == "pass", report.summary()
            cycle = sum(v for k, v in report.timings.items() if k != "resolve" and k != "gdb-attach")
            samples["probe_cycle_live"].append(cycle)
    if args.matrix:
        kernels = "debian:bullseye,debian:bookworm,debian:trixie,debian:sid"
        cli("matrix", "--kernels", kernels, "--jobs", "2", "--accel", accel)  # warm: fetches, chroots
        samples["matrix_4x3_jobs2"] = [cli("matrix", "--kernels", kernels, "--jobs", "2", "--accel", accel)]
    med = {k: statistics.median(v) for k, v in samples.items()}
    floor_ssh = med["raw_floor"] + med["ssh_handshake"]
    ratios = {  # name → (ratio, target or None)
        "exec_true_cold / (raw_floor + ssh_handshake)": (med["exec_true_cold"] / floor_ssh, 1.15),
        "exec_true_warm / (raw_floor + ssh_handshake)": (med["exec_true_warm"] / floor_ssh, None),
        "probe_cold / raw_floor": (med["probe_cold"] / med["raw_floor"], None),
        "probe_warm / raw_floor": (med["probe_warm"] / med["raw_floor"], 0.35),
        "probe_warm / probe_cold": (med["probe_warm"] / med["probe_cold"], None),
        "probe_cycle_live (s)": (med["probe_cycle_live"], 0.5),
    }
    if "matrix_4x3_jobs2" in med:
        ratios["matrix_4x3_jobs2 (s)"] = (med["matrix_4x3_jobs2"], 180.0)
    print(f"kernel {kernel.release}  accel {accel}  runs {args.runs} (medians)")
    for k, v in med.items():
        print(f"  {k:20} {v:7.2f} s   samples {', '.join(f'{x:.2f}' for x in samples[k])}")
    for k, (v, target) in ratios.items():
        verdict = "" if target is None else f"  target <= {target}: {'met' if v <= target else 'NOT met'}"
        print(f"  {k:45} {v:6.2f}{'' if '(s)' in k else 'x'}{verdict}")
    if args.json:
        args.json.write_text(json.dumps({"kernel": kernel.release, "accel": accel, "samples": samples,
                                         "medians": med,
                                         "ratios": {k: {"value": v, "target": t} for k, (v, t) in ratios.items()}},
                                        indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

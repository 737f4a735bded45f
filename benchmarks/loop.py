#!/usr/bin/env python3
"""The developer loop's figures (issue 16), each with its ratio to the floor, from one run.

Every figure is the wall time of a whole process, median of ``--runs``, the
figures interleaved run by run (so a change in the machine's load hits them all
alike):

* the floor: QEMU with the same kernel, ``-smp 1 -nic none``, ``quiet``, an
  initramfs whose busybox init prints a marker and powers off (the marker must
  reach the console);
* ``vmprobe exec --cold -- true`` (a boot) and ``vmprobe exec -- true`` (a warm
  restore; its snapshot made before timing);
* on a live VM (``vmprobe up``, made before timing): ``exec --on N -- true`` and a
  whole ``probe --on N`` (the built-in fork probe, module cached);
* a whole warm ``vmprobe probe`` (module cached);
* ``vmprobe --help`` (start-up and imports);
* ``vmprobe matrix``: six kernels × three checks with ``--jobs 2``, warm (kernels,
  build chroots, modules and snapshots made by one untimed run first).

Prints a markdown table: measured, ratio to the floor, target, met or not.

Usage: benchmarks/loop.py [--runs 3 | --quick] [--kernel debian:bookworm] [--accel auto]
                          [--skip matrix] [--matrix-kernels A,B,...] [--json out.json]
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

MARKER = "VMPROBE-FLOOR-MARKER"


@dataclass(frozen=True)
class Figure:
    """One row of the table: what it is and its target (a ratio to the floor, or seconds)."""
    key: str
    what: str
    ratio_target: float | None = None
    seconds_target: float | None = None

    def target(self) -> str:
        if self.ratio_target is not None:
            return f"≤ {self.ratio_target:g}×"
        if self.seconds_target is not None:
            return f"≤ {self.seconds_target:g} s"
        return "—"

    def met(self, seconds: float, floor: float) -> bool | None:
        if self.ratio_target is not None:
            return seconds / floor <= self.ratio_target
        if self.seconds_target is not None:
            return seconds <= self.seconds_target
        return None


FIGURES = (
    Figure("floor", "floor: busybox init prints a marker, powers off (`-smp 1 -nic none`, `quiet`)"),
    Figure("cold_exec", "cold `vmprobe exec --cold -- true`", ratio_target=1.3),
    Figure("warm_exec", "warm `vmprobe exec -- true`", ratio_target=0.35),
    Figure("on_exec", "`vmprobe exec --on N -- true`", ratio_target=0.1),
    Figure("on_probe", "whole `vmprobe probe --on N`, module cached", ratio_target=0.3),
    Figure("warm_probe", "whole warm `vmprobe probe`, module cached", ratio_target=1.0),
    Figure("help", "`vmprobe --help` (start-up and imports)"),
    Figure("matrix", "`vmprobe matrix`, 6 kernels × 3 checks, `--jobs 2`, warm", seconds_target=30.0),
)


def format_table(samples: dict[str, list[float]], figures=FIGURES) -> str:
    """The markdown table: median, ratio to the floor's median, target, met or not (on that
    ratio), and the median of the round-by-round ratios (each sample over the floor sample of
    its round: steadier on a host whose speed drifts; "—" for a figure not sampled every round).
    Figures without samples (skipped) are left out; the floor must be there."""
    floors = samples["floor"]
    floor = statistics.median(floors)
    lines = ["| what | measured (median) | ratio to floor | target | | paired ratio |",
             "|---|---|---|---|---|---|"]
    for f in figures:
        if not samples.get(f.key):
            continue
        value = statistics.median(samples[f.key])
        met = f.met(value, floor)
        verdict = "" if met is None else ("met" if met else "**not met**")
        paired = (f"{statistics.median(x / y for x, y in zip(samples[f.key], floors)):.2f}×"
                  if len(samples[f.key]) == len(floors) else "—")
        lines.append(f"| {f.what} | {value:.2f} s | {value / floor:.2f}× | {f.target()} | {verdict} | {paired} |")
    return "\n".join(lines)


def format_samples(samples: dict[str, list[float]]) -> str:
    return "\n".join(f"  {k:11} {', '.join(f'{x:.2f}' for x in v)}" for k, v in samples.items() if v)


# -- measuring -----------------------------------------------------------------

def vmprobe(*args: str, timeout: float = 900, check: bool = True, codes: list | None = None) -> float:
    """Wall time of a whole ``vmprobe`` process (its output kept only for an error); ``codes``
    collects exit statuses when ``check`` is off."""
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "vmprobe", *args], capture_output=True, text=True,
                         timeout=timeout, stdin=subprocess.DEVNULL)
    seconds = time.monotonic() - t0
    if codes is not None:
        codes.append(res.returncode)
    if check and res.returncode != 0:
        raise RuntimeError(f"vmprobe {' '.join(args)} exited {res.returncode}:\n{res.stdout[-1500:]}"
                           f"{res.stderr[-1500:]}")
    return seconds


def main() -> int:
    from bench_common import arguments, raw_floor

    from vmprobe.arch import profile_for
    from vmprobe.kernels import get_kernel
    from vmprobe.kernels.catalog import load_catalog, matrix_specs
    from vmprobe.vm.accel import choose_accel

    ap = arguments(__doc__)
    ap.add_argument("--quick", action="store_true", help="one run of each (no medians)")
    ap.add_argument("--skip", action="append", default=[], choices=[f.key for f in FIGURES if f.key != "floor"],
                    help="leave a figure out (repeatable)")
    ap.add_argument("--matrix-kernels", help="the matrix's kernels (default: the catalog's six)")
    args = ap.parse_args()
    runs = 1 if args.quick else args.runs
    kernel = get_kernel(args.kernel)
    accel = choose_accel(args.accel, profile_for(kernel.arch), kernel.image_path)
    common = ("--kernel", args.kernel, "--accel", accel)
    specs = args.matrix_kernels or ",".join(matrix_specs(load_catalog()))
    matrix = ("matrix", "--kernels", specs, "--jobs", "2", "--accel", accel)
    want = {f.key for f in FIGURES} - set(args.skip)
    name = f"loop{os.getpid()}"
    matrix_codes: list[int] = []
    load = [os.getloadavg()[0]]
    print(f"warming up: snapshot, module, live VM {name!r}{', matrix' if 'matrix' in want else ''} "
          f"(untimed)", file=sys.stderr, flush=True)
    vmprobe("exec", *common, "--", "true")
    vmprobe("probe", *common)
    if want & {"on_exec", "on_probe"}:
        vmprobe("up", "--name", name, *common)
    try:
        if want & {"on_exec", "on_probe"}:
            vmprobe("probe", "--on", name)   # the supervisor's first probe imports the check
        if "matrix" in want:
            vmprobe(*matrix, timeout=3600, check=False)
        steps = {
            "floor": lambda: raw_floor(kernel, accel, quiet=True, marker=MARKER),
            "cold_exec": lambda: vmprobe("exec", *common, "--cold", "--", "true"),
            "warm_exec": lambda: vmprobe("exec", *common, "--", "true"),
            "on_exec": lambda: vmprobe("exec", "--on", name, "--", "true"),
            "on_probe": lambda: vmprobe("probe", "--on", name),
            "warm_probe": lambda: vmprobe("probe", *common),
            "help": lambda: vmprobe("--help"),
            "matrix": lambda: vmprobe(*matrix, timeout=1800, check=False, codes=matrix_codes),
        }
        samples: dict[str, list[float]] = {f.key: [] for f in FIGURES}
        for i in range(runs):   # interleaved: every figure once per round
            for key, step in steps.items():
                if key in want:
                    samples[key].append(step())
                    print(f"round {i + 1}/{runs}: {key} {samples[key][-1]:.2f} s", file=sys.stderr, flush=True)
            load.append(os.getloadavg()[0])
    finally:
        if want & {"on_exec", "on_probe"}:
            vmprobe("down", name, check=False, timeout=120)
    print(f"`benchmarks/loop.py{' --quick' if args.quick else f' --runs {runs}'}`, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {kernel.spec} ({kernel.release}) under "
          f"{accel}, {os.cpu_count()} CPUs, medians of {runs}, interleaved; 1-min load average "
          f"{min(load):.1f}–{max(load):.1f} during the run"
          f"{f'; matrix kernels {specs}' if 'matrix' in want else ''}\n")
    print(format_table(samples))
    if any(matrix_codes):
        print(f"\nthe timed matrix runs exited {matrix_codes} (1: a check did not pass; see vmprobe matrix)")
    print("\nsamples (s):\n" + format_samples(samples))
    if args.json:
        args.json.write_text(json.dumps({"kernel": kernel.release, "accel": accel, "runs": runs,
                                         "load": load, "matrix_kernels": specs, "samples": samples},
                                        indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

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
* with ``--live``: a live VM (``vmprobe up``): ``exec --on N -- true`` and a whole
  ``probe --on N`` (module cached), whole CLI processes, against the raw floor
  (targets ≤ 0.1× and ≤ 0.3×); and, for the client↔supervisor design, one
  ``true`` through the supervisor's socket vs a fresh paramiko connection to the
  guest (handshake + command) from a new process;
* with ``--matrix``: ``vmprobe matrix`` on the four catalog kernels × three
  checks with 2 workers (warm caches: kernels and build chroots fetched first).

Usage: benchmarks/boot_and_probe.py [--runs 3] [--accel tcg] [--json out.json] [--live] [--only-live]
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
from vmprobe.runs import live_client
from vmprobe.kernels import get_kernel
from vmprobe.vm.accel import choose_accel
from vmprobe.vm.machine import Machine
from vmprobe.vm.ssh import GuestSsh


def cli(*args: str) -> float:
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-m", "vmprobe", *args], check=True, timeout=300,
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - t0


PARAMIKO_TRUE = """
import sys, time, paramiko
t0 = time.monotonic()
key = paramiko.ECDSAKey.from_private_key_file(sys.argv[2])
c = paramiko.SSHClient(); c.set_missing_host_key_policy(paramiko.AutoAddPolicy())
c.connect("127.0.0.1", int(sys.argv[1]), username="root", pkey=key, look_for_keys=False, allow_agent=False)
c.exec_command("true")[1].channel.recv_exit_status(); c.close()
print(time.monotonic() - t0)
"""


def live_samples(args, accel: str, runs: int, floor: list[float] | None = None, kernel=None) -> dict:
    """Time a live VM: exec --on, probe --on (module cached), and the two client designs."""
    name = f"bench{int(time.time()) % 100000}"
    common = ("--kernel", args.kernel, "--accel", accel)
    samples: dict[str, list[float]] = {"live_exec_true": [], "live_probe": [], "live_socket_true": [],
                                       "live_paramiko_true_fresh_process": []}
    subprocess.run([sys.executable, "-m", "vmprobe", "up", "--name", name, *common], check=True, timeout=600,
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        cli("probe", "--on", name)   # the supervisor's first probe imports the check and pages in symbols
        for _ in range(runs):
            if floor is not None:
                floor.append(raw_floor(kernel, accel))
            samples["live_exec_true"].append(cli("exec", "--on", name, "--", "true"))
            samples["live_probe"].append(cli("probe", "--on", name))
            t0 = time.monotonic()
            live_client.call(name, "exec", timeout=60, command="true", timeout_s=60)
            samples["live_socket_true"].append(time.monotonic() - t0)
            samples["live_paramiko_true_fresh_process"].append(_paramiko_true(name))
    finally:
        subprocess.run([sys.executable, "-m", "vmprobe", "down", name], timeout=120,
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return samples


def _paramiko_true(name: str) -> float:
    """A new process that imports paramiko, does the SSH handshake with the guest (a key
    authorized for this measurement only) and runs ``true``: the other client design."""
    import tempfile
    import paramiko
    with tempfile.TemporaryDirectory(prefix="vmprobe-bench-") as tmp:
        key = paramiko.ECDSAKey.generate(bits=256)
        key.write_private_key_file(f"{tmp}/key")
        pub = f"{key.get_name()} {key.get_base64()} bench"
        live_client.call(name, "exec", timeout=60, command=f"grep -q '{key.get_base64()}' "
                         f"/root/.ssh/authorized_keys 2>/dev/null || printf '\\n%s\\n' '{pub}' >> /root/.ssh/authorized_keys",
                         timeout_s=60)
        info = live_client.require(name)
        port = next(a.split("hostfwd=tcp:127.0.0.1:")[1].split("-")[0] for a in info["command_line"]
                    if "hostfwd=" in a)
        t0 = time.monotonic()
        subprocess.run([sys.executable, "-c", PARAMIKO_TRUE, port, f"{tmp}/key"], check=True, timeout=120,
                       stdout=subprocess.DEVNULL)
        return time.monotonic() - t0


def report_live(samples: dict, floor: float) -> None:
    med = {k: statistics.median(v) for k, v in samples.items()}
    for k, v in med.items():
        print(f"  {k:34} {v:7.3f} s   samples {', '.join(f'{x:.3f}' for x in samples[k])}")
    for k, target in (("live_exec_true", 0.1), ("live_probe", 0.3)):
        r = med[k] / floor
        print(f"  {k + ' / raw_floor':45} {r:6.3f}x  target <= {target}: {'met' if r <= target else 'NOT met'}")
    print(f"  {'paramiko fresh process / socket':45} {med['live_paramiko_true_fresh_process'] / med['live_socket_true']:6.1f}x")


def live_only(args) -> int:
    kernel = get_kernel(args.kernel)
    modules.build(modules.FORK_PROBE, kernel)
    accel = choose_accel(args.accel, profile_for(kernel.arch), kernel.image_path)
    floor: list[float] = []
    samples = live_samples(args, accel, args.runs, floor, kernel)
    print(f"kernel {kernel.release}  accel {accel}  runs {args.runs} (medians; live figures interleaved "
          f"with the raw floor)")
    print(f"  {'raw_floor':34} {statistics.median(floor):7.3f} s   samples {', '.join(f'{x:.2f}' for x in floor)}")
    report_live(samples, statistics.median(floor))
    if args.json:
        args.json.write_text(json.dumps({"kernel": kernel.release, "accel": accel, "raw_floor": floor,
                                         "samples": samples}, indent=2) + "\n")
    return 0


def main() -> int:
    ap = arguments(__doc__)
    ap.add_argument("--matrix", action="store_true", help="also time the four-kernel matrix")
    ap.add_argument("--live", action="store_true", help="also time a live VM (vmprobe up, --on)")
    ap.add_argument("--only-live", action="store_true", help="the raw floor and the live figures only")
    args = ap.parse_args()
    if args.only_live:
        return live_only(args)
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
    live = live_samples(args, accel, args.runs) if args.live else None
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
    if live:
        report_live(live, med["raw_floor"])
        samples.update(live)
    if args.json:
        args.json.write_text(json.dumps({"kernel": kernel.release, "accel": accel, "samples": samples,
                                         "medians": med,
                                         "ratios": {k: {"value": v, "target": t} for k, (v, t) in ratios.items()}},
                                        indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

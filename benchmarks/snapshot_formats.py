#!/usr/bin/env python3
"""Warm-start state formats compared: migration to a file vs savevm into a qcow2.

vmprobe saves its warm-start state by migrating the stopped VM to a file and
restores with ``-incoming`` (see vmprobe/snapshot.py). The alternative is
``savevm`` into a qcow2 image and ``-loadvm``. For each: time to save, size,
and time from QEMU start to SSH-ready of a restored machine (median of
``--runs``), plus whether two restores can run at once from one saved state.

Usage: benchmarks/snapshot_formats.py [--runs 3] [--kernel debian:bookworm] [--json out.json]
"""
from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_common import arguments

from vmprobe.errors import VmprobeError
from vmprobe.guest import rootfs
from vmprobe.kernels import get_kernel
from vmprobe.vm import snapshot
from vmprobe.vm.machine import Machine


class BenchMachine(Machine):
    """A Machine restored from this benchmark's own saved state (not the cache's), kept either
    as a migration file or, with ``qcow2``, as a savevm snapshot in that image."""

    def __init__(self, *a, directory: Path, qcow2: Path | None = None, loadvm: bool = False, **kw):
        super().__init__(*a, **kw)
        self._directory, self._qcow2, self._loadvm = directory, qcow2, loadvm

    def _qemu_command(self, initrd, qmp_path):
        cmd = super()._qemu_command(initrd, qmp_path)
        if self._qcow2:
            if "-incoming" in cmd:
                i = cmd.index("-incoming")
                del cmd[i:i + 2]
            cmd += ["-drive", f"if=none,id=state0,format=qcow2,file={self._qcow2}"]
            if self._loadvm:
                cmd += ["-loadvm", "warm"]
        return cmd

    def _restore(self, keys):
        self._image = snapshot.WarmImage(self._directory, 0.0)
        self._incoming = self._image.state
        self._start(self._image.initrd)
        self._resume(keys)


def _source_initrd(kernel, directory: Path) -> Path:
    initrd = directory / "initrd.img"
    shutil.copyfile(rootfs.build_base(kernel).path, initrd)
    return initrd


def save_migration(kernel, accel, directory: Path) -> tuple[float, int]:
    with Machine(kernel, accel=accel, _snapshot_source=_source_initrd(kernel, directory)) as m:
        t0 = time.monotonic()
        snapshot.save_state(m, directory / "state")
        return time.monotonic() - t0, (directory / "state").stat().st_size


def save_savevm(kernel, accel, directory: Path) -> tuple[float, int]:
    qcow2 = directory / "state.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(qcow2), "64M"], check=True)
    with BenchMachine(kernel, accel=accel, _snapshot_source=_source_initrd(kernel, directory),
                      directory=directory, qcow2=qcow2) as m:
        t0 = time.monotonic()
        m.qmp.cmd("stop")
        out = m.qmp.cmd("human-monitor-command", **{"command-line": "savevm warm"})
        if out.strip():
            raise VmprobeError(f"savevm: {out.strip()}")
        return time.monotonic() - t0, qcow2.stat().st_size


def restore(kernel, accel, directory: Path, fmt: str) -> Machine:
    """A started (not yet entered) machine restored from ``directory`` in format ``fmt``."""
    qcow2 = directory / "state.qcow2" if fmt == "savevm" else None
    return BenchMachine(kernel, accel=accel, warm=True, directory=directory, qcow2=qcow2, loadvm=True)


def main() -> int:
    args = arguments(__doc__, accel="tcg").parse_args()
    kernel = get_kernel(args.kernel)
    results = {}
    with tempfile.TemporaryDirectory(prefix="vmprobe-bench-") as tmp:
        for fmt, save in (("migration", save_migration), ("savevm", save_savevm)):
            directory = Path(tmp) / fmt
            directory.mkdir()
            seconds, size = save(kernel, args.accel, directory)
            samples = []
            for _ in range(args.runs):
                with restore(kernel, args.accel, directory, fmt) as m:
                    samples.append(m.timings["boot"] + m.timings["ssh"])
            try:
                with restore(kernel, args.accel, directory, fmt) as a, \
                        restore(kernel, args.accel, directory, fmt) as b:
                    parallel = "yes" if a.run("true").status == b.run("true").status == 0 else "no"
            except VmprobeError as exc:
                parallel = f"no ({exc.message.splitlines()[0][:80]})"
            results[fmt] = {"save_seconds": seconds, "bytes": size, "restore_to_ssh": samples,
                            "restore_median": statistics.median(samples), "two_at_once": parallel}
    print(f"kernel {kernel.release}  accel {args.accel}  runs {args.runs}")
    for fmt, r in results.items():
        print(f"  {fmt:10} save {r['save_seconds']:5.2f} s  size {r['bytes'] / 2**20:6.1f} MiB  "
              f"restore→SSH {r['restore_median']:5.2f} s (median)  two at once: {r['two_at_once']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

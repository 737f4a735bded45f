"""What the benchmark scripts share: their common options and the raw floor."""
from __future__ import annotations

import argparse
import re
import subprocess
import tempfile
import time
from pathlib import Path

from vmprobe.arch import profile_for
from vmprobe.formats.cpio import NewcArchive


def arguments(doc: str, accel: str = "auto") -> argparse.ArgumentParser:
    """--kernel, --accel, --runs and --json, described by the script's docstring."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--kernel", default="debian:bookworm")
    ap.add_argument("--accel", default=accel)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", type=Path, help="write the samples and medians here")
    return ap


def raw_floor(kernel, accel: str, microvm: bool = False, *, quiet: bool = False,
              marker: str | None = None) -> float:
    """Wall time of QEMU with the same kernel, an init that ends the VM at once (amd64 host
    busybox). ``microvm``: ``-M microvm,acpi=off``, which needs the TSC rate under TCG and
    cannot power off (``reboot -f`` with ``-no-reboot`` ends QEMU the same way). ``marker``:
    the init prints it, then powers off, and the console must show it (the kernel really
    reached init); ``quiet`` adds ``quiet`` to the kernel command line."""
    p = profile_for(kernel.arch)
    a = NewcArchive()
    for d in ("bin", "proc"):
        a.dir(d)
    a.chardev("dev/console", 5, 1)
    a.file("bin/busybox", Path("/bin/busybox").read_bytes(), 0o755)
    end = "reboot -f" if microvm or not marker else "poweroff -f"
    say = f"/bin/busybox echo {marker}\n" if marker else ""
    a.file("init", f"#!/bin/busybox sh\n{say}/bin/busybox {end}\n".encode(), 0o755)
    machine = ["-M", "microvm,acpi=off"] if microvm else ["-M", p.machine]
    extra = f" reboot=t tsc_early_khz={_host_tsc_khz()}" if microvm else ""
    extra += " quiet" if quiet else ""
    with tempfile.TemporaryDirectory(prefix="vmprobe-bench-") as tmp:
        initrd = Path(tmp) / "initrd"
        initrd.write_bytes(a.gzipped())
        cmd = [p.qemu, *machine, "-accel", accel, "-cpu", p.cpu_kvm if accel == "kvm" else p.cpu_tcg,
               "-smp", "1", "-m", "1G", "-nodefaults", "-no-user-config", "-display", "none", "-nic", "none",
               "-no-reboot", "-kernel", str(kernel.image_path), "-initrd", str(initrd),
               "-append", f"console={p.console},115200 panic=-1 {' '.join(p.append)} "
                          f"cryptomgr.notests{extra}",
               "-chardev", f"file,id=c,path={tmp}/console.log", "-serial", "chardev:c"]
        t0 = time.monotonic()
        subprocess.run(cmd, check=True, timeout=120, stdin=subprocess.DEVNULL)
        seconds = time.monotonic() - t0
        if marker and marker not in Path(f"{tmp}/console.log").read_text(errors="replace"):
            raise RuntimeError(f"the floor's init did not print {marker!r} on {kernel.release}'s console")
        return seconds


def _host_tsc_khz() -> int:
    mhz = float(re.search(r"cpu MHz\s*:\s*([\d.]+)", Path("/proc/cpuinfo").read_text())[1])
    return int(mhz * 1000)

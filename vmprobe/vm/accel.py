"""KVM or TCG: trust a real boot, not the device node.

``/dev/kvm`` can exist while nested KVM hangs right after the kernel's
decompressor. ``auto`` therefore boots the kernel once under KVM with no root
filesystem and a deadline: reaching the "no root" panic means KVM works. The
verdict is cached per host (hostname, host kernel, QEMU version) and guest arch, never per
kernel: a KVM failure is recorded only if the same kernel boots under TCG.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from vmprobe.arch import ArchProfile, profile_where
from vmprobe.config import cache_dir
from vmprobe.errors import ConfigError
from vmprobe.host import cache

PROBE_TIMEOUT = 25.0
TCG_CONFIRM_TIMEOUT = 90.0
CHOICES = ("auto", "kvm", "tcg")


@functools.lru_cache(maxsize=None)
def qemu_version(binary: str) -> str:
    """The first line of ``binary --version``. Every launch needs it and asking costs ≈30 ms, so
    it is asked once per binary file: kept on disk under the file's path, inode, size and mtime
    (an upgrade of QEMU asks again)."""
    path = shutil.which(binary)
    if path is None:
        profile = profile_where(qemu=binary)
        hint = f" (apt-get install {profile.qemu_package})" if profile else ""
        raise ConfigError(f"{binary} not found: install QEMU{hint}")
    st = os.stat(path)
    known = cache_dir("accel") / "qemu-version-{}".format(
        cache.digest(os.path.realpath(path), f"{st.st_ino} {st.st_size} {st.st_mtime_ns}"))
    with contextlib.suppress(OSError):
        return known.read_text()
    out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10).stdout
    version = out.splitlines()[0] if out else "unknown"
    if out:
        with contextlib.suppress(OSError):
            tmp = known.with_name(f"{known.name}.tmp{os.getpid()}")
            tmp.write_text(version)
            os.replace(tmp, known)
    return version


def kvm_device_usable() -> bool:
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


def _verdict_path(profile: ArchProfile) -> Path:
    host = cache.digest(platform.node(), platform.release(), qemu_version(profile.qemu))
    return cache_dir("accel") / f"kvm-{profile.name}-{host}.json"


def write_verdict(profile: ArchProfile, verdict: str, why: str) -> Path:
    """Record the KVM verdict for this host, QEMU and guest arch (atomically: readers take no lock)."""
    path = _verdict_path(profile)
    with cache.locked(path):
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps({"accel": verdict, "why": why, "time": time.time()}) + "\n")
        os.replace(tmp, path)
    return path


def probe_kvm(profile: ArchProfile, image: Path, timeout: float = PROBE_TIMEOUT,
              accel: str = "kvm") -> tuple[bool, str]:
    """Boot ``image`` under KVM (or ``accel``) without a rootfs; True if it reaches the no-root panic."""
    with tempfile.TemporaryDirectory(prefix="vmprobe-kvmprobe-") as tmp:
        log = Path(tmp) / "console.log"
        cpu = profile.cpu_kvm if accel == "kvm" else profile.cpu_tcg
        cmd = [profile.qemu, "-accel", accel, "-cpu", cpu, "-M", profile.machine,
               "-m", "256M", "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
               "-chardev", f"file,id=con0,path={log}", "-serial", "chardev:con0",
               "-kernel", str(image), "-append", f"console={profile.console} panic=-1"]
        start = time.monotonic()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, start_new_session=True)
        try:
            while time.monotonic() - start < timeout:
                text = log.read_text(errors="replace") if log.exists() else ""
                if "Kernel panic" in text or "VFS:" in text:
                    return True, f"{accel.upper()} boot reached the kernel in {time.monotonic() - start:.1f}s"
                if proc.poll() is not None:
                    err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
                    return False, f"QEMU exited {proc.returncode} under {accel.upper()}: {err[-300:]}"
                time.sleep(0.1)
            return False, (f"{accel.upper()} boot did not reach the kernel's no-root panic in {timeout:.0f}s"
                           + (" (nested KVM hang?)" if accel == "kvm" else ""))
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
            proc.wait()
            if proc.stderr:
                proc.stderr.close()


def choose_accel(requested: str, profile: ArchProfile, image: Path, log=None) -> str:
    """The accelerator to use: forced, or ``auto`` decided by a cached test boot."""
    if requested not in CHOICES:
        raise ConfigError(f"unknown accelerator {requested!r}; choose one of {', '.join(CHOICES)}")
    if requested != "auto":
        if requested == "kvm" and not kvm_device_usable():
            raise ConfigError("--accel kvm was asked for but /dev/kvm is missing or not accessible")
        return requested
    if not profile.is_native or not kvm_device_usable():
        return "tcg"
    path = _verdict_path(profile)
    if path.exists():
        return json.loads(path.read_text())["accel"]
    with cache.locked(path):
        if path.exists():
            return json.loads(path.read_text())["accel"]
        ok, why = probe_kvm(profile, image)
        verdict = {"accel": "kvm" if ok else "tcg", "why": why, "time": time.time()}
        # a KVM failure says something about KVM only if the same kernel boots under TCG:
        # an odd kernel must not decide the accelerator of every later run
        if ok or probe_kvm(profile, image, TCG_CONFIRM_TIMEOUT, accel="tcg")[0]:
            tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
            tmp.write_text(json.dumps(verdict) + "\n")
            os.replace(tmp, path)
    if log:
        log(f"vmprobe: accel auto → {verdict['accel']} ({why}); cached in {path}")
    return verdict["accel"]

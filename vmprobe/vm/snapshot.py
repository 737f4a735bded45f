"""Warm starts: a booted guest saved once, restored by every later run.

Under TCG a cold boot costs seconds before anything is tested. A snapshot is
made by booting the guest up to its snapshot point (network up, waiting for
keys on the control port), stopping it, and migrating its state to a file.
Later machines start QEMU with ``-incoming`` from that file: it is only read,
so parallel machines share it. Each restored guest then gets its own keys,
nonce, wall clock and a random seed over the control port (see rootfs/init).

What restores share, by construction: the kernel's KASLR layout, the state of
its RNG before the seed is mixed in, and everything the guest did up to the
snapshot point. Tests that need a freshly randomised kernel use a cold boot
(``--cold``).

A snapshot is keyed by everything that shapes the saved machine: QEMU's
version, the kernel image, the base initramfs, accelerator, CPU, memory,
SMP, extra kernel arguments and QEMU arguments. Change any of them and a new
snapshot is made.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from vmprobe.arch.eras import boot_settings
from vmprobe.config import cache_dir
from vmprobe.errors import QemuError
from vmprobe.guest import rootfs
from vmprobe.host import cache
from vmprobe.vm.accel import qemu_version

if TYPE_CHECKING:
    from vmprobe.vm.machine import Machine

FORMAT = "snapshot-v1"


@dataclass(frozen=True)
class WarmImage:
    directory: Path
    made_in: float          # seconds spent making it in this run (0 when it was cached)

    @property
    def state(self) -> Path:
        return self.directory / "state"

    @property
    def initrd(self) -> Path:
        return self.directory / "initrd.img"

    @property
    def meta(self) -> dict:
        return json.loads((self.directory / "meta.json").read_text())

    def kallsyms(self, read: Callable[[], str]) -> Path:
        """The host copy of /proc/kallsyms that this state's restores share (same layout),
        read once, by ``read``, from the first restore that asks."""
        path = self.directory / "kallsyms"
        if not path.exists():
            with cache.locked(path):
                if not path.exists():
                    text = read()
                    with cache.staging(path, is_dir=False) as tmp:
                        tmp.write_text(text)
        return path


def snapshot_inputs(m: "Machine", base: rootfs.BaseImage) -> dict:
    """What the saved state depends on (the key is their hash; meta.json keeps them)."""
    p, era = m.profile, boot_settings(m.profile, m.kernel.release)   # old kernels: another machine and CPU
    return {
        "format": FORMAT,
        "qemu": qemu_version(p.qemu),
        "kernel": m.kernel.spec,
        "release": m.kernel.release,
        "image_sha256": m.kernel.image_sha256,
        "rootfs": base.key,
        "arch": p.name, "machine": era.machine, "accel": m.accel,
        "cpu": p.cpu_kvm if m.accel == "kvm" else era.cpu_tcg,
        "memory": m.memory, "smp": m.smp,
        "append": list(m.extra_append), "qemu_args": list(m.qemu_args),
    }


def ensure_snapshot(m: "Machine") -> WarmImage:
    """The saved state for machines like ``m`` (same kernel and arguments), made if missing."""
    base = rootfs.build_base(m.kernel, m.userland, log=m.log)
    inputs = snapshot_inputs(m, base)
    key = cache.digest(json.dumps(inputs, sort_keys=True))
    directory = cache_dir("snapshots") / key
    if _complete(directory):
        return WarmImage(directory, 0.0)
    with cache.locked(directory):
        if _complete(directory):  # another run made it while we waited
            return WarmImage(directory, 0.0)
        t0 = time.monotonic()
        with cache.staging(directory) as tmp:
            _make(m, base, inputs, tmp)
        made_in = time.monotonic() - t0
    m.log(f"vmprobe: saved a warm-start snapshot of {m.kernel.release} in {made_in:.1f}s "
          f"({directory})")
    return WarmImage(directory, made_in)


def _complete(directory: Path) -> bool:
    """All files there and the state intact. The state's sha256 (≈0.8 s for 120 MB) is checked
    once per version of the file: a stamp keeps the size, mtime and inode it was checked at."""
    try:
        meta = json.loads((directory / "meta.json").read_text())
        state = directory / "state"
        if not (directory / "initrd.img").is_file() or state.stat().st_size != meta["state_bytes"]:
            return False
        stamp = directory / "verified"
        if stamp.exists() and stamp.read_text() == _stat_stamp(state):
            return True
        if cache.sha256_file(state) != meta["state_sha256"]:
            return False
        stamp.write_text(_stat_stamp(state))
        return True
    except (OSError, ValueError, KeyError):
        return False


def _stat_stamp(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size} {st.st_mtime_ns} {st.st_ino}"


def save_state(m: "Machine", path: Path, timeout: float = 120) -> None:
    """Stop the guest and write its whole state to ``path`` (a migration stream)."""
    m.qmp.cmd("stop")
    m.qmp.cmd("migrate-set-parameters", **{"max-bandwidth": 1 << 40})
    m.qmp.cmd("migrate", uri=f"exec:cat > '{path}'")
    deadline = time.monotonic() + timeout
    while True:
        status = m.qmp.cmd("query-migrate")
        state = status.get("status")
        if state == "completed":
            return
        if state in ("failed", "cancelled"):
            raise QemuError(f"saving the VM state of {m.kernel.release} to {path} {state}: "
                            f"{status.get('error-desc', 'no reason given')}")
        if time.monotonic() > deadline:
            raise QemuError(f"saving the VM state of {m.kernel.release} did not finish "
                            f"within {timeout:.0f}s (status {state})")
        time.sleep(0.02)


def discard_snapshot(directory: Path) -> None:
    """Remove a snapshot QEMU could not load, so the next machine makes it again."""
    with cache.locked(directory):
        shutil.rmtree(directory, ignore_errors=True)


def _make(m: "Machine", base: rootfs.BaseImage, inputs: dict, directory: Path) -> None:
    initrd = directory / "initrd.img"
    shutil.copyfile(base.path, initrd)
    source = type(m)(m.kernel, accel=m.accel, memory=m.memory, smp=m.smp, append=m.extra_append,
                     qemu_args=m.qemu_args, boot_timeout=m.boot_timeout, log=m.log, userland=m.userland,
                     _snapshot_source=initrd)
    with source:
        boot = source.timings["boot"]
        t0 = time.monotonic()
        save_state(source, directory / "state")
        saved = time.monotonic() - t0
    state = directory / "state"
    meta = dict(inputs, boot_seconds=round(boot, 3), save_seconds=round(saved, 3),
                state_bytes=state.stat().st_size, state_sha256=cache.sha256_file(state),
                created=time.time())
    (directory / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    (directory / "verified").write_text(_stat_stamp(state))


class SnapshotUnusable(QemuError):
    """QEMU could not load a saved state (truncated, corrupted, or made by another build)."""

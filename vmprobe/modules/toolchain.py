"""Where module builds run: on the host, or in a chroot of the kernel's own suite.

trixie's kernel wants gcc-14 and its kbuild tools need glibc ≥ 2.38; sid's
wants gcc-16. Nothing from another suite is ever installed into the host:
such kernels get a ``debootstrap --variant=minbase`` chroot of their suite
with the compiler and kbuild's libraries, built once per (suite, arch,
package set), cached and locked like kernels. A build bind-mounts the kernel
tree (read-only) and the work dir into the chroot and unmounts them on every
path.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from vmprobe.config import cache_dir
from vmprobe.errors import ConfigError, FetchError, ModuleBuildError
from vmprobe.host import cache, progress
from vmprobe.kernels import Kernel
from vmprobe.kernels.apt import DEFAULT_KEYRING, mirrors

DEBOOTSTRAP_TIMEOUT = 1200
CHROOT_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class BuildEnv:
    """Paths as the compiler sees them, and how to run a command there."""

    build_dir: str
    work_dir: str
    run: Callable[..., subprocess.CompletedProcess]
    where: str  # for messages: "host" or "trixie chroot"


def chroot_path(kernel: Kernel) -> Path:
    key = cache.digest(kernel.suite, kernel.arch, *sorted(kernel.toolchain_packages))
    return cache_dir("toolchains") / f"{kernel.suite}-{kernel.arch}-{key[:12]}"


def ensure_chroot(kernel: Kernel, log=None) -> Path:
    """The kernel's suite chroot with its compiler (debootstrapped once, then cached)."""
    root = chroot_path(kernel)
    if (root / ".vmprobe-complete").exists():
        return root
    if not shutil.which("debootstrap"):
        raise ConfigError(f"debootstrap not found: modules for {kernel.release} are built in a "
                          f"{kernel.suite} chroot (apt-get install debootstrap)")
    with cache.locked(root):
        if (root / ".vmprobe-complete").exists():
            return root
        if log:
            log(f"vmprobe: creating a {kernel.suite} build chroot with {', '.join(kernel.toolchain_packages)} "
                f"(once; about a minute)")
        m = mirrors()
        with cache.staging(root) as tmp:
            cmd = ["debootstrap", "--variant=minbase", f"--arch={kernel.arch}", f"--keyring={m.keyring or DEFAULT_KEYRING}",
                   "--include=" + ",".join(kernel.toolchain_packages), kernel.suite, str(tmp), m.debian]
            try:
                with progress.status(f"debootstrapping the {kernel.suite} build chroot"):
                    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=DEBOOTSTRAP_TIMEOUT,
                                          stdin=subprocess.DEVNULL)
            except subprocess.TimeoutExpired:
                raise FetchError(f"debootstrap of {kernel.suite} did not finish in {DEBOOTSTRAP_TIMEOUT}s") from None
            if proc.returncode != 0:
                log_file = tmp / "debootstrap" / "debootstrap.log"
                detail = log_file.read_text(errors="replace")[-3000:] if log_file.exists() else proc.stderr[-3000:]
                raise FetchError(f"debootstrap of the {kernel.suite} build chroot failed", detail=detail)
            (tmp / "vmprobe").mkdir(exist_ok=True)
            (tmp / ".vmprobe-complete").write_text(" ".join(cmd) + "\n")
    return root


def _mount_bind(source: Path, target: Path, readonly: bool) -> None:
    target.mkdir(parents=True, exist_ok=True)
    opts = ["-o", "bind,ro"] if readonly else ["-o", "bind"]
    proc = subprocess.run(["mount", *opts, str(source), str(target)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise ModuleBuildError(f"cannot bind-mount {source} into the build chroot: {proc.stderr.strip()}")


def _umount(target: Path) -> None:
    if subprocess.run(["umount", str(target)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


@contextlib.contextmanager
def build_env(kernel: Kernel, work: Path, log=None) -> Iterator[BuildEnv]:
    """Yield where and how to run kbuild for ``kernel`` on the sources in ``work``."""
    if kernel.toolchain != "chroot":
        yield BuildEnv(str(kernel.build_path), str(work),
                       lambda argv, **kw: subprocess.run(argv, **kw), "host")
        return
    root = ensure_chroot(kernel, log)
    inside = Path("vmprobe") / uuid.uuid4().hex[:12]
    kmount, wmount = root / inside / "kernel", root / inside / "work"
    mounted: list[Path] = []
    try:
        _mount_bind(kernel.root, kmount, readonly=True)
        mounted.append(kmount)
        _mount_bind(work, wmount, readonly=False)
        mounted.append(wmount)
        # objtool reads /proc (stack limits); mounts stack, so parallel builds are fine
        if subprocess.run(["mount", "-t", "proc", "proc", str(root / "proc")], capture_output=True).returncode == 0:
            mounted.append(root / "proc")

        def run(argv, **kw):
            env = dict(kw.pop("env", None) or os.environ, PATH=CHROOT_PATH)
            return subprocess.run(["chroot", str(root), *argv], env=env, **kw)

        yield BuildEnv(f"/{inside}/kernel/{kernel.build_dir}", f"/{inside}/work", run,
                       f"{kernel.suite} chroot")
    finally:
        for target in reversed(mounted):
            _umount(target)
        # only remove our mount points once nothing is mounted on them
        for target in (wmount, kmount):
            with contextlib.suppress(OSError):
                if not os.path.ismount(target):
                    target.rmdir()
        with contextlib.suppress(OSError):
            (root / inside).rmdir()

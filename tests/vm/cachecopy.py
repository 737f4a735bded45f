"""A private copy of the kernel cache for one kernel, for tests that damage or watch it.

The apt state is copied; the kernel entry is hard-linked (fast, ≈14 000 files). A test
that changes a file of the entry must first make it private (``private``) so the shared
cache is never touched.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from vmprobe.config import cache_dir
from vmprobe.kernels import Kernel
from vmprobe.kernels.kernel import MANIFEST


def private(path: Path) -> None:
    """Replace a hard link by a copy of its own."""
    data = path.read_bytes()
    path.unlink()
    path.write_bytes(data)


def copy_apt_state(kernel: Kernel, into: Path) -> None:
    suite = kernel.suite or kernel.spec.split(":")[1].split("/")[0]
    apt_state = cache_dir("apt") / f"{suite}-{kernel.arch}"
    shutil.copytree(apt_state, into / "apt" / apt_state.name, symlinks=True,
                    ignore=shutil.ignore_patterns("*.lock"))
    if cache_dir("accel").is_dir():  # the host's KVM verdict: no test boot in the copy
        shutil.copytree(cache_dir("accel"), into / "accel", ignore=shutil.ignore_patterns("*.lock"))


def copy_cache(kernel: Kernel, into: Path) -> Path:
    """``into`` becomes a cache holding ``kernel``; returns the entry's path in it."""
    copy_apt_state(kernel, into)
    entry = into / "kernels" / kernel.root.name
    entry.parent.mkdir(parents=True)
    subprocess.run(["cp", "-al", str(kernel.root), str(entry)], check=True)
    for name in (MANIFEST, "kernel.json"):
        if (entry / name).exists():
            private(entry / name)
    return entry

"""Kernels vmprobe built (``built:KEY``): where their cache entries live, how they are read back.

Apart from the build itself (``kernels.build``) so that resolving a ``built:``
spec does not pull the builder in.
"""
from __future__ import annotations

from pathlib import Path

from vmprobe.config import cache_dir
from vmprobe.errors import FetchError
from vmprobe.host import cache
from vmprobe.kernels.kernel import Kernel


def built_entry(key: str) -> Path:
    return cache_dir("kernels") / f"built-{key}"


def built_kernels() -> list[Kernel]:
    """Every complete built kernel in the cache (no verification: cheap, for listings)."""
    found = []
    for entry in sorted(cache_dir("kernels").glob("built-*")):
        if (entry / "kernel.json").is_file():
            try:
                found.append(Kernel.load(entry, verify=False))
            except FetchError:
                continue
    return found


def load_built(entry: Path) -> Kernel:
    """A built kernel's record (entries from before records named their vmlinux get it added)."""
    kernel = Kernel.load(entry)
    if not kernel.vmlinux and (entry / "linux" / "vmlinux").is_file():
        with cache.locked(entry):
            kernel.vmlinux = "linux/vmlinux"
            kernel.save()
    return kernel

"""vmprobe-insmod: a guest program that loads a module with exactly one ``finit_module`` call.

BusyBox ``insmod`` falls back to ``init_module`` when ``finit_module`` fails,
so a module whose init fails ran its init twice (its lines printed twice,
≈80 ms apart). The loader (``templates/loader/vmprobe_insmod.c``) is
freestanding C (no libc, raw syscalls), built once per guest arch with the
host's compilers and cached.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from vmprobe.config import TEMPLATES_DIR, cache_dir
from vmprobe.errors import ConfigError, ModuleBuildError
from vmprobe.host import cache

SOURCE = TEMPLATES_DIR / "loader" / "vmprobe_insmod.c"
FLAGS = ("-Os", "-static", "-nostdlib", "-ffreestanding", "-fno-stack-protector", "-fno-pie", "-no-pie",
         "-fno-asynchronous-unwind-tables", "-Wall")
#: guest arch → (compiler candidates, extra flags)
COMPILERS = {"x86_64": (("gcc", "gcc-12"), ()), "i386": (("gcc", "gcc-12"), ("-m32",)),
             "aarch64": (("aarch64-linux-gnu-gcc", "aarch64-linux-gnu-gcc-12"), ())}


def loader_for(arch: str) -> Path:
    """The loader binary for guests of ``arch`` (a profile name: x86_64, i386, aarch64), built on first use."""
    if arch not in COMPILERS:
        raise ConfigError(f"vmprobe-insmod has no build for {arch} guests")
    names, extra = COMPILERS[arch]
    cc = next((shutil.which(n) for n in names if shutil.which(n)), None)
    if cc is None:
        raise ConfigError(f"none of {', '.join(names)} found: vmprobe-insmod for {arch} guests is "
                          f"built with it")
    key = cache.digest("loader-v1", arch, cache.sha256_file(SOURCE), *extra)
    target = cache_dir("loaders") / f"vmprobe-insmod-{arch}-{key[:12]}"
    if target.exists():
        return target
    with cache.locked(target):
        if not target.exists():
            tmp = target.with_name(target.name + ".tmp")
            res = subprocess.run([cc, *FLAGS, *extra, "-o", str(tmp), str(SOURCE)],
                                 capture_output=True, text=True, timeout=120)
            if res.returncode != 0:
                raise ModuleBuildError(f"building vmprobe-insmod for {arch} failed: "
                                       f"{(res.stderr or res.stdout).strip()[:400]}")
            tmp.rename(target)
    return target

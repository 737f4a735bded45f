"""vmprobe-insmod: a guest program that loads a module with exactly one ``finit_module`` call.

BusyBox ``insmod`` falls back to ``init_module`` when ``finit_module`` fails,
so a module whose init fails ran its init twice (its lines printed twice,
≈80 ms apart). The loader (``templates/loader/vmprobe_insmod.c``) is
freestanding C (no libc, raw syscalls), built once per guest arch with the
host's compilers and cached.
"""
from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

from vmprobe.arch import ArchProfile
from vmprobe.config import TEMPLATES_DIR, cache_dir
from vmprobe.errors import ConfigError, ModuleBuildError
from vmprobe.host import cache

SOURCE = TEMPLATES_DIR / "loader" / "vmprobe_insmod.c"
FLAGS = ("-Os", "-static", "-nostdlib", "-ffreestanding", "-fno-stack-protector", "-fno-pie", "-no-pie",
         "-fno-asynchronous-unwind-tables", "-Wall")


def loader_for(profile: ArchProfile) -> Path:
    """The loader binary for guests of ``profile``'s arch, built on first use."""
    arch, names, extra = profile.name, profile.static_cc, profile.static_cflags
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


def insmod_line(path: str, params: str = "") -> str:
    """What a user types to load a module in a vmprobe guest: its vmprobe-insmod (one finit_module;
    BusyBox insmod would run a failing init twice), the parameters as one argument."""
    return f"vmprobe-insmod {path} {shlex.quote(params)}" if params.strip() else f"vmprobe-insmod {path}"

"""Processes vmprobe starts, and how they end with it.

Children that outlive vmprobe are leaks (a QEMU holding a port, a make
burning both cores): each gets a parent-death signal and its own process
group, and vmprobe turns SIGTERM/SIGHUP into SystemExit so ``with`` blocks
clean up on those paths too.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import tempfile
from pathlib import Path


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Have the kernel send ``sig`` to this process when its parent thread exits
    (PR_SET_PDEATHSIG); QEMU runs it between fork and exec."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, sig)


def runtime_dir() -> Path:
    """Where per-machine temp dirs go (short paths: unix sockets cap at 107 bytes)."""
    base = os.environ.get("VMPROBE_RUNTIME_DIR") or os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return Path(base)


def reap_group(proc: subprocess.Popen, timeout: float) -> None:
    for sig, wait in ((None, timeout), (signal.SIGTERM, 3), (signal.SIGKILL, 5)):
        if sig is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
        try:
            proc.wait(wait)
            break
        except subprocess.TimeoutExpired:
            continue
    # the group may hold helpers (none today); make sure nothing of it is left
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def install_signal_handlers() -> None:
    """Turn SIGTERM/SIGHUP into SystemExit so ``with Machine`` blocks clean up."""
    def handler(signum, frame):
        raise SystemExit(128 + signum)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)



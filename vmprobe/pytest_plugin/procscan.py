"""Finding (and stopping) vmprobe's QEMU processes and machine dirs by scanning ``/proc``.

The plugin's leak checks (``no_leaks``, the session's cleanup) must see what a
test left behind even when the process that started it is gone, so they read
the host's process table and the runtime dir rather than any bookkeeping.
"""
from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path


def qemu_processes() -> list[tuple[int, str]]:
    """(pid, command line) of every running QEMU system emulator."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and b"qemu-system" in Path(argv[0].decode(errors="replace")).name.encode():
            found.append((int(entry.name), " ".join(a.decode(errors="replace") for a in argv if a)))
    return found


def leftovers(runtime: Path | None = None, exclude: set[str] = frozenset()) -> list[str]:
    """vmprobe QEMU processes and machine dirs under ``runtime`` (default: the current runtime
    dir) that are not in ``exclude`` (dirs, pids)."""
    from vmprobe.host.processes import runtime_dir
    base = runtime or runtime_dir()
    procs = [f"{pid} {cmd}" for pid, cmd in qemu_processes()
             if f"{base}/vmprobe-" in cmd and str(pid) not in exclude
             and not any(d in cmd for d in exclude if d.startswith("/"))]
    dirs = [str(p) for p in sorted(base.glob("vmprobe-*"))
            if p.is_dir() and str(p) not in exclude and not p.name.startswith("vmprobe-pytest-")]
    return procs + dirs


def stop_machines_under(directory: Path) -> list[int]:
    """SIGKILL the QEMU processes whose files live under ``directory`` (a session dir whose
    machines should all be gone); returns their pids."""
    pids = [pid for pid, cmd in qemu_processes() if f"{directory}/" in cmd]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while pids and time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
        time.sleep(0.05)
    return pids

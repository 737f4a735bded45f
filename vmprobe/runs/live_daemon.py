"""Starting a live VM's supervisor: the double fork, the readiness pipe, the reaper.

See ``vmprobe.runs.live`` for the supervisor itself.
"""
from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path

from vmprobe.errors import VmprobeError
from vmprobe.runs import live_client as wire
from vmprobe.runs.live import IDLE_TIMEOUT, Supervisor, _tell
from vmprobe.runs.live_client import LOG

UP_SLACK = 300.0          # beyond the boot timeout: the first snapshot, the KVM test boot


# -- starting one (in the `vmprobe up` process) -------------------------------

def start(kernel, name: str, machine_kw: dict, idle_timeout: float = IDLE_TIMEOUT, log=None) -> dict:
    """Start a supervisor for a live VM of ``kernel`` named ``name``; return its info once
    the VM answers."""
    log = log or (lambda msg: None)
    base = wire.registry()
    base.mkdir(mode=0o700, exist_ok=True)
    os.chmod(base, 0o700)
    if wire.read_info(name) is not None:
        raise VmprobeError(f"a live VM named {name!r} is already up (vmprobe down {name} first)")
    d = wire.vm_dir(name)
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(mode=0o700)
    r, w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: a new session, then the supervisor in a grandchild
        try:
            os.close(r)
            os.setsid()
            if os.fork() == 0:
                _supervise(kernel, name, d, machine_kw, idle_timeout, w)
        finally:
            os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    wait = machine_kw.get("boot_timeout", 120) + UP_SLACK
    what = f"the live VM {name!r} ({kernel.release}) to come up"
    log(f"vmprobe: waiting for {what} (at most {wait:.0f}s; its log: {d / LOG})")
    data = b""
    deadline = time.monotonic() + wait
    with os.fdopen(r, "rb", buffering=0) as pipe:
        while b"\n" not in data:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([pipe], [], [], left)[0]:
                raise VmprobeError(f"timed out after {wait:.0f}s waiting for {what}; see {d / LOG}")
            chunk = pipe.read(65536)
            if not chunk:
                break
            data += chunk
    try:
        reply = json.loads(data.decode().splitlines()[0])
    except (ValueError, IndexError):
        tail = (d / LOG).read_text(errors="replace")[-2000:] if (d / LOG).exists() else ""
        raise VmprobeError(f"the supervisor of {name!r} died before {what}", detail=tail or None) from None
    if "error" in reply:
        raise wire.LiveError(reply["error"]["rendered"], reply["error"]["kind"], reply["error"]["exit_code"])
    return reply


def _supervise(kernel, name: str, d: Path, machine_kw: dict, idle_timeout: float, ready_fd: int) -> None:
    """The grandchild: detach stdio, fork the reaper, serve until told to stop."""
    os.chdir("/")
    os.umask(0o077)
    os.environ["VMPROBE_PROGRESS"] = "0"
    logf = os.open(d / LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(logf, 1)
    os.dup2(logf, 2)
    os.close(null)
    os.close(logf)
    reaper = _fork_reaper(keep=(0, 1, 2))
    _tell(reaper, f"dir {d}")
    sup = Supervisor(kernel, name, d, machine_kw, idle_timeout, reaper)
    status = 0
    try:
        sup.serve(ready_fd)
    except BaseException:  # noqa: BLE001  (logged; the reaper and the finally clean up)
        traceback.print_exc()
        status = 1
    finally:
        sup.close()
        _tell(reaper, "clear")
        os.close(reaper)
    os._exit(status)


def _fork_reaper(keep: tuple[int, ...]) -> int:
    """Fork a process that cleans up after this one, however it ends; return the pipe to tell it
    what to clean (``dir PATH``, ``pgid N``, ``-pgid N``, ``clear``)."""
    r, w = os.pipe()
    if os.fork() == 0:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        os.closerange(3, r)
        os.closerange(r + 1, 1 << 16)
        dirs: list[str] = []
        groups: set[int] = set()
        buf = b""
        while chunk := os.read(r, 4096):
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                what, _, arg = line.decode().partition(" ")
                if what == "dir":
                    dirs.append(arg)
                elif what == "pgid":
                    groups.add(int(arg))
                elif what == "-pgid":
                    groups.discard(int(arg))
                elif what == "clear":
                    dirs.clear()
                    groups.clear()
        for group in groups:
            with contextlib.suppress(OSError):
                os.killpg(group, signal.SIGKILL)
        time.sleep(0.2 if groups else 0)   # QEMU lets go of its sockets
        for path in dirs:
            shutil.rmtree(path, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.rmdir(wire.registry())
        os._exit(0)
    os.close(r)
    return w

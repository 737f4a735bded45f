"""QEMU's QMP link at start-up: QEMU connects to a unix socket we listen on, and when it exits
first its stderr says why (a taken SSH port is told apart: the caller starts again on another)."""
from __future__ import annotations

import contextlib
import select
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable

from qemu.qmp.legacy import QEMUMonitorProtocol

from vmprobe.errors import QemuError


class PortTaken(Exception):
    """QEMU could not bind the SSH forward's loopback port: it was taken after we chose it."""


def listen(path: Path) -> socket.socket:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    return listener


def connect(listener: socket.socket, proc: subprocess.Popen, stderr: Callable[[], str],
            command: list[str], timeout: float = 20) -> QEMUMonitorProtocol:
    """Wait (``timeout``) for QEMU to connect, then negotiate; closes ``listener``. Raises
    QemuError with QEMU's stderr if it exits or never connects, PortTaken for a taken port."""
    try:
        deadline = time.monotonic() + timeout
        while True:
            ready, _, _ = select.select([listener], [], [], 0.1)
            if ready:
                conn, _ = listener.accept()
                break
            if proc.poll() is not None:
                text = stderr()
                if "hostfwd" in text or "host forwarding" in text:
                    raise PortTaken()
                raise QemuError(f"QEMU exited with status {proc.returncode} at start-up: {text.strip()[-500:]}",
                                detail=" ".join(command), exit_status=proc.returncode, command=command,
                                output=text)
            if time.monotonic() > deadline:
                raise QemuError(f"QEMU did not connect to its QMP socket within {timeout:.0f}s",
                                detail=stderr(), command=command, output=stderr())
    finally:
        listener.close()
    qmp = QEMUMonitorProtocol(conn)
    try:
        qmp.connect(negotiate=True)
    except Exception as exc:  # QEMU quit during start-up (bad device, bad option…)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
        raise QemuError(f"QEMU exited with status {proc.poll()} at start-up: {stderr().strip()[-500:] or exc}",
                        detail=" ".join(command), exit_status=proc.poll(), command=command,
                        output=stderr()) from None
    qmp.settimeout(10)
    return qmp

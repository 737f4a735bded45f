"""SysRq over a serial BREAK: the third path, as on the headless machines of the 2.6 era.

The console's chardev is a telnet-mode unix socket that QEMU also logs to the
console file (``logfile=``, written whether or not anyone is connected), so the
console is captured as before and a client can send a telnet ``IAC BREAK``:
QEMU turns it into a break condition on the UART (CHR_EVENT_BREAK → the line
status register's BI bit), and the kernel (``CONFIG_MAGIC_SYSRQ_SERIAL``) takes
the next character within 5 s as a SysRq key, on the console's port only.
HMP/QMP have no way to send a break to a serial port; a mux chardev's ``C-a b``
would need the console to be muxed with something else.
"""
from __future__ import annotations

import contextlib
import socket
import time
from pathlib import Path
from typing import Callable

from vmprobe.errors import QemuError

IAC_BREAK = b"\xff\xf3"   # telnet: Interpret As Command, BREAK (RFC 854)


def console_socket(console_log: Path) -> Path:
    """Where a machine's console socket is: beside its console log."""
    return console_log.with_name("console.sock")


def send_sysrq(sock_path: Path, key: str, *, settle: float = 0.0, timeout: float = 5,
               until: Callable[[], bool] | None = None) -> None:
    """A BREAK on the console's serial line, then ``key``. While connected the client must read
    (QEMU holds the console's output back for a client that does not), so it drains until it
    closes: ``settle`` (at least 0.2) seconds after the key, or as soon as ``until()`` says the key
    was seen.

    The break and the key may go in one write (``settle=0``, the default): QEMU's telnet
    parser raises the break (a NUL with BI in the UART's FIFO) before it queues the key, and
    the 8250 driver reads them in that order (bookworm, idle and busy guest: 30/30 seen; a
    0.2 s pause between them had cost every check 0.2 s)."""
    if len(key) != 1:
        raise ValueError(f"a SysRq key is one character, not {key!r}")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        try:
            sock.connect(str(sock_path))
        except OSError as exc:
            raise QemuError(f"could not connect to the console socket {sock_path} to send a serial "
                            f"BREAK: {exc}") from None
        if settle > 0:
            sock.sendall(IAC_BREAK)
            _drain(sock, settle)   # the break is handled before the key arrives
            sock.sendall(key.encode())
        else:
            sock.sendall(IAC_BREAK + key.encode())
        _drain(sock, max(settle, 0.2), until)
    finally:
        with contextlib.suppress(OSError):
            sock.close()


def _drain(sock: socket.socket, seconds: float, until: Callable[[], bool] | None = None) -> None:
    deadline = time.monotonic() + seconds
    sock.settimeout(0.02 if until else 0.05)
    while time.monotonic() < deadline and not (until and until()):
        try:
            if not sock.recv(65536):
                return
        except (socket.timeout, BlockingIOError):
            continue

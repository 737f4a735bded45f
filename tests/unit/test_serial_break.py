"""The serial BREAK client (vm/serial_break.py) against a stand-in for QEMU's telnet socket,
and the console chardev that makes it possible."""
from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path

import pytest

from vmprobe.arch import PROFILES
from vmprobe.vm.qemu_command import QemuInputs, qemu_command
from vmprobe.vm.serial_break import IAC_BREAK, console_socket, send_sysrq


def test_break_then_key_while_draining_output(tmp_path):
    path = tmp_path / "console.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    got = bytearray()

    def qemu() -> None:
        conn, _ = server.accept()
        with conn:
            conn.sendall(b"\xff\xfb\x01" + b"console output " * 1000)   # negotiation, then output
            conn.settimeout(2)
            while data := conn.recv(100):
                got.extend(data)

    worker = threading.Thread(target=qemu)
    worker.start()
    send_sysrq(path, "w", settle=0.1)
    worker.join(5)
    server.close()
    assert bytes(got) == IAC_BREAK + b"w"


@contextlib.contextmanager
def _quiet_qemu(tmp_path):
    """A stand-in console socket that only reads: yields its path and the chunks it got."""
    path = tmp_path / "console.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    chunks: list[bytes] = []

    def qemu() -> None:
        conn, _ = server.accept()
        with conn:
            conn.settimeout(5)
            while data := conn.recv(100):
                chunks.append(data)

    worker = threading.Thread(target=qemu)
    worker.start()
    try:
        yield path, chunks
    finally:
        worker.join(5)
        server.close()


def test_draining_after_the_key_ends_once_it_was_seen(tmp_path):
    with _quiet_qemu(tmp_path) as (path, chunks):
        t0 = time.monotonic()
        send_sysrq(path, "w", settle=0.5, until=lambda: b"w" in b"".join(chunks))
        took = time.monotonic() - t0
    assert b"".join(chunks) == IAC_BREAK + b"w"
    assert took < 0.9   # the break's settle (0.5 s), not a second one after the key


def test_refusals(tmp_path):
    with pytest.raises(ValueError):
        send_sysrq(tmp_path / "x", "ww")
    from vmprobe.errors import QemuError
    with pytest.raises(QemuError, match="console socket"):
        send_sysrq(tmp_path / "missing.sock", "w")


def test_console_is_a_logged_telnet_socket():
    p = Path("/run/m/console.log")
    line = qemu_command(QemuInputs(profile=PROFILES["amd64"], accel="tcg", smp=1, memory="1G", image=p,
                                   initrd=p, nonce="n", ssh_port=2222, console_log=p, qmp_socket=p,
                                   gdb_socket=p, control_socket=p))
    chardev = next(a for a in line if a.startswith("socket,id=con0,"))
    assert f"path={console_socket(p)}" in chardev and "telnet=on" in chardev
    assert f"logfile={p}" in chardev and "server=on,wait=off" in chardev


def test_break_and_key_in_one_write_by_default(tmp_path):
    """No pause between them: QEMU raises the break before it queues the key."""
    with _quiet_qemu(tmp_path) as (path, chunks):
        t0 = time.monotonic()
        send_sysrq(path, "w", until=lambda: bool(chunks))
        took = time.monotonic() - t0
    assert chunks[0] == IAC_BREAK + b"w"
    assert took < 0.15

"""Closed by default: what a running VM's QEMU listens on, read from the kernel's socket tables.

Every socket QEMU holds is found through ``/proc/<pid>/fd`` and looked up in
``/proc/net/{tcp,tcp6,udp,udp6,unix}``. The only TCP listener may be the SSH
forward on 127.0.0.1; no UDP socket may be bound to a non-loopback address;
the only unix listeners are the gdbstub, the console (for a serial BREAK) and,
on arches that have one, the control port (warm starts, the serial agent),
inside the machine's 0700 dir (QMP is a socket vmprobe listens on and QEMU
connects to).
"""
from __future__ import annotations

import ipaddress
import os
import socket
import stat
import struct
from pathlib import Path

from vmprobe.vm.serial_break import console_socket

TCP_LISTEN = "0A"
UNIX_ACCEPTCON = 0x10000  # __SO_ACCEPTCON: a listening unix socket


def socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def _address(hex_addr: str) -> tuple[str, int]:
    host, port = hex_addr.split(":")
    raw = bytes.fromhex(host)
    if len(raw) == 4:
        ip = socket.inet_ntop(socket.AF_INET, struct.pack("<I", int(host, 16)))
    else:  # four little-endian 32-bit words
        ip = socket.inet_ntop(socket.AF_INET6, b"".join(struct.pack("<I", int(host[i:i + 8], 16))
                                                        for i in range(0, 32, 8)))
    return ip, int(port, 16)


def inet_sockets(inodes: set[int]) -> list[tuple[str, str, int, str]]:
    """(table, local ip, port, state) of the given sockets in the inet tables."""
    found = []
    for table in ("tcp", "tcp6", "udp", "udp6"):
        lines = Path(f"/proc/net/{table}").read_text().splitlines()[1:]
        for line in lines:
            cols = line.split()
            if int(cols[9]) in inodes:
                ip, port = _address(cols[1])
                found.append((table, ip, port, cols[3]))
    return found


def unix_listeners(inodes: set[int]) -> list[str]:
    found = []
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        cols = line.split()
        if int(cols[6]) in inodes and int(cols[3], 16) & UNIX_ACCEPTCON:
            found.append(cols[7] if len(cols) > 7 else "")
    return found


def test_qemu_listens_on_loopback_and_its_private_dir_only(vm):
    inodes = socket_inodes(vm.proc.pid)
    assert inodes, "QEMU holds no socket at all: the test looks in the wrong place"
    inet = inet_sockets(inodes)
    tcp_listeners = [(ip, port) for table, ip, port, st in inet if table.startswith("tcp") and st == TCP_LISTEN]
    assert tcp_listeners == [("127.0.0.1", vm.ssh_port)], inet
    for table, ip, port, _ in inet:  # connections on the forward included: all bound to loopback
        assert ipaddress.ip_address(ip).is_loopback, f"QEMU has a {table} socket on {ip}:{port}"
    listeners = unix_listeners(inodes)
    expected = ({str(vm.gdb_socket), str(console_socket(vm.console_log))}
                | ({str(vm.control_socket)} if vm.profile.control_port else set()))
    assert sorted(listeners) == sorted(expected), listeners
    assert stat.S_IMODE(vm.workdir.stat().st_mode) == 0o700
    assert vm.workdir.stat().st_uid == os.getuid()
    # the SSH forward answers on loopback and nowhere else
    with socket.create_connection(("127.0.0.1", vm.ssh_port), timeout=5) as s:
        assert s.recv(64).startswith(b"SSH-")

"""How vmprobe talks to a guest: SSH or the serial agent, behind one interface.

``Machine.run``/``upload`` (and the probe check's ``start``/``wait``) work the
same over either. ``auto`` takes SSH when the guest runs an SSH server (its READY
marker says so; else the serial agent is asked, one round trip on the control port):
SSH streams output and is faster for big transfers; the serial transport needs
no network, no virtio and no SSH server (old kernels, `kernels build` kernels
without networking).
"""
from __future__ import annotations

import contextlib
import socket
from typing import TYPE_CHECKING, BinaryIO, Protocol

from vmprobe.errors import ConfigError
from vmprobe.vm.results import CommandResult
from vmprobe.vm.serial_transport import SerialTransport

if TYPE_CHECKING:
    from pathlib import Path

    from vmprobe.vm.machine import Machine
    from vmprobe.vm.ssh import GuestSsh, RunKeys

TRANSPORTS = ("auto", "ssh", "serial")


class GuestTransport(Protocol):
    """What a machine needs from a way into the guest (GuestSsh and SerialTransport have it)."""

    name: str

    def run(self, command: str, timeout: float = 60, *, check: bool = False,
            stdout: BinaryIO | None = None, stderr: BinaryIO | None = None) -> CommandResult: ...

    def start(self, command: str, timeout: float = 15): ...

    def wait(self, channel, command: str, timeout: float, *, check: bool = False,
             stdout: BinaryIO | None = None, stderr: BinaryIO | None = None) -> CommandResult: ...

    def put(self, local: "Path", remote: str, mode: int = 0o644, timeout: float = 60) -> None: ...

    def close(self) -> None: ...


def connect(machine: "Machine", keys: "RunKeys", kind: str = "auto", ssh_up: str | None = None) -> GuestTransport:
    """The machine's transport of the kind asked for (``auto``: SSH when the guest runs it).

    ``ssh_up`` is what the guest's READY marker said ("1": its SSH server is up), which
    spares ``auto`` the agent's hello; without it the agent is asked."""
    if kind not in TRANSPORTS:
        raise ConfigError(f"unknown transport {kind!r} (choose from {', '.join(TRANSPORTS)})")
    port = machine.profile.control_port
    if kind == "ssh" or (kind == "auto" and (not port or ssh_up == "1")):
        return _ssh(machine, keys)
    if not port:
        raise ConfigError(f"the serial transport needs a second serial port, which {machine.profile.name} "
                          f"guests do not have here ({machine.profile.machine}); use --transport ssh")
    serial = SerialTransport(control(machine), alive=_alive(machine), port=port)
    serial.hello(machine.ssh_timeout)
    if kind == "auto":
        if serial.ssh_available:
            return _ssh(machine, keys)
        machine.log("vmprobe: the guest runs no SSH server (no network?): commands go over the "
                    f"serial agent on {port}")
    return serial


def _ssh(machine: "Machine", keys: "RunKeys") -> "GuestSsh":
    from vmprobe.vm.ssh import GuestSsh   # paramiko: imported once the guest is on its way up
    ssh = GuestSsh(machine.ssh_port, keys)
    ssh.connect(machine.ssh_timeout, alive=machine.check_alive)
    return ssh


def control(machine: "Machine") -> socket.socket:
    """The machine's connection to its control port (made now on a cold machine)."""
    if machine._control is None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        try:
            sock.connect(str(machine.control_socket))
        except OSError:
            with contextlib.suppress(OSError):
                sock.close()
            raise
        machine._control = sock
    return machine._control


def _alive(machine: "Machine"):
    """Raises once QEMU is gone or the kernel crashed fatally after the transport came up."""
    mark = machine.console.mark()
    return lambda: machine.check_alive(since=mark)

"""The QEMU command line of a vmprobe machine, built from its inputs alone.

A pure function, so the line can be shown or tested without starting QEMU.
Everything that listens does so on a unix socket in the machine's 0700 dir
(QMP, gdbstub, the warm-start control port) or on 127.0.0.1 (the SSH
forward); the guest network is ``restrict=on``: it cannot reach out.

The control port (a second serial port, on arches that have one) is always
there: warm starts send the run's line on it, and the guest's serial agent
then serves commands on it (``serial_transport``).
"""
from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

from vmprobe.arch import ArchProfile
from vmprobe.arch.eras import boot_settings
from vmprobe.vm import panics
from vmprobe.vm.serial_break import console_socket


@dataclass(frozen=True)
class QemuInputs:
    profile: ArchProfile
    accel: str
    smp: int
    memory: str
    image: Path
    initrd: Path
    nonce: str
    ssh_port: int
    console_log: Path
    qmp_socket: Path
    gdb_socket: Path
    control_socket: Path
    warm: bool = False                 # made for, or restored from, a saved state
    incoming: Path | None = None       # the saved state to restore
    extra_append: tuple[str, ...] = ()
    qemu_args: tuple[str, ...] = ()
    release: str = ""                  # the kernel's: old kernels get their boot quirks (arch/eras.py)


def qemu_command(q: QemuInputs) -> list[str]:
    p = q.profile
    era = boot_settings(p, q.release)
    append = [f"console={p.console},115200", f"panic={era.panic}",
              *era.append, "cryptomgr.notests", f"vmprobe.nonce={q.nonce}",
              f"vmprobe.warm={p.control_port}" if q.warm and p.control_port else "",
              f"vmprobe.agent={p.control_port}" if p.control_port else "", *q.extra_append]
    net = f"user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:{q.ssh_port}-10.0.2.15:22"
    cmd = [
        p.qemu, "-name", f"vmprobe-{q.nonce}", "-M", era.machine,
        "-accel", q.accel, "-cpu", p.cpu_kvm if q.accel == "kvm" else era.cpu_tcg,
        "-smp", str(q.smp), "-m", q.memory,
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-kernel", str(q.image), "-initrd", str(q.initrd),
        "-append", " ".join(a for a in append if a),
        # the console: logged to its file as it comes; its telnet socket takes a serial BREAK
        "-chardev", f"socket,id=con0,path={console_socket(q.console_log)},server=on,wait=off,telnet=on,"
                    f"logfile={q.console_log}", "-serial", "chardev:con0",
        "-chardev", f"socket,id=qmp0,path={q.qmp_socket}", "-mon", "chardev=qmp0,mode=control",
        "-chardev", f"socket,id=gdb0,path={q.gdb_socket},server=on,wait=off",
        "-gdb", "chardev:gdb0",
        "-netdev", net, "-device", f"{era.nic},netdev=net0,romfile=",
        "-object", "rng-random,id=rng0,filename=/dev/urandom",
        "-device", "virtio-rng-pci,rng=rng0",
        *panics.qemu_args(p.pvpanic_device),  # the guest goes on to print its panic (panics.py)
        *[arg for device in p.devices for arg in ("-device", device)],
        *q.qemu_args,
    ]
    if p.control_port:  # the control port: identical in the saved and the restored machine
        cmd += ["-chardev", f"socket,id=ctl0,path={q.control_socket},server=on,wait=off",
                *(["-device", f"{p.control_bus},id=ctl", "-device", "virtconsole,chardev=ctl0,bus=ctl.0"]
                  if p.control_bus else ["-serial", "chardev:ctl0"])]
    if q.incoming:
        cmd += ["-incoming", f"exec:cat '{q.incoming}'"]
    return cmd


def free_port() -> int:
    """A free loopback TCP port for the SSH forward (QEMU may still lose it to a race: retried)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

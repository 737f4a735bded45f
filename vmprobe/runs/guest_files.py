"""Files into the guest (``--put``, ``--module`` on ``exec``/``shell``) and ``--dry-run``.

``--put LOCAL[:GUEST]`` copies a host file in (default ``/tmp/<its name>``);
``--module FILE.c|DIR|FILE.ko`` builds the module for the kernel (a ``.ko`` is
checked for the kernel's vermagic) and copies it to ``/tmp/<name>.ko``; the
``insmod`` line that loads it is printed, as ``repro --keep`` does.

``--dry-run`` prints the QEMU command line and the kernel command line a run
would use (``vm/qemu_command.py``, a pure function) and starts nothing: the
accelerator is the one forced or the cached ``auto`` verdict (no test boot),
the port, the nonce and the machine dir are placeholders chosen per run.
"""
from __future__ import annotations

import json
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from vmprobe.errors import ConfigError
from vmprobe.guest.loader import insmod_line

GUEST_DIR = "/tmp"


@dataclass(frozen=True)
class GuestFile:
    local: Path
    guest: str
    mode: int = 0o644
    insmod: str | None = None      # for a module: the line that loads it


def parse_put(text: str) -> tuple[Path, str]:
    """``LOCAL[:GUEST]``; GUEST defaults to /tmp/<name>, and a GUEST ending in / is a dir."""
    local, sep, guest = text.partition(":")
    path = Path(local).expanduser()
    if not path.is_file():
        raise ConfigError(f"--put {text}: {path} is not a file")
    if not sep or not guest:
        guest = f"{GUEST_DIR}/{path.name}"
    elif guest.endswith("/"):
        guest += path.name
    if not guest.startswith("/"):
        raise ConfigError(f"--put {text}: the guest path must be absolute (e.g. {GUEST_DIR}/{path.name})")
    return path.resolve(), guest


def prepare(args, kernel, log) -> list[GuestFile]:
    """What ``--put`` and ``--module`` copy in (the module built for ``kernel``)."""
    files = []
    for text in getattr(args, "put", None) or []:
        local, guest = parse_put(text)
        files.append(GuestFile(local, guest, 0o755 if local.stat().st_mode & 0o111 else 0o644))
    if getattr(args, "module", None):
        from vmprobe import modules
        built = modules.build(Path(args.module), kernel, log=log)
        for module in built:
            guest = f"{GUEST_DIR}/{module.path.name}"
            params = getattr(args, "module_params", "") or ""
            files.append(GuestFile(module.path, guest, 0o644, insmod_line(guest, params)))
    return files


def copy_in(upload, files: list[GuestFile], log) -> None:
    """Copy ``files`` with ``upload(local, guest, mode)``; say where they are."""
    for f in files:
        upload(f.local, f.guest, f.mode)
        if f.insmod:
            log(f"vmprobe: module copied in; load it with:  {f.insmod}")
        else:
            log(f"vmprobe: {f.local} copied to {f.guest}")


def dry_run(machine, out=None) -> int:
    """Print the QEMU command line and the kernel command line; start nothing."""
    from vmprobe.host import cache
    from vmprobe.host.processes import runtime_dir
    from vmprobe.vm import accel as accel_mod

    out = out or sys.stdout
    m = machine
    notes = []
    if m.requested_accel != "auto":
        m.accel = m.requested_accel
    elif not m.profile.is_native or not accel_mod.kvm_device_usable():
        m.accel = "tcg"
    else:
        path = accel_mod._verdict_path(m.profile)
        try:
            m.accel = json.loads(path.read_text())["accel"]
        except (OSError, ValueError, KeyError):
            m.accel = "tcg"
            notes.append("accel auto: no cached KVM verdict yet (a run test-boots KVM first); tcg shown")
    m.workdir = runtime_dir() / "vmprobe-XXXXXXXX"
    m.ssh_port = 0
    if m.warm:
        from vmprobe.config import cache_dir
        from vmprobe.guest import rootfs
        from vmprobe.vm.snapshot import snapshot_inputs
        base = rootfs.build_base(m.kernel)
        key = cache.digest(json.dumps(snapshot_inputs(m, base), sort_keys=True))
        directory = cache_dir("snapshots") / key
        m._incoming, initrd = directory / "state", directory / "initrd.img"
        if not m._incoming.exists():
            notes.append(f"warm: the snapshot {directory} is made on the first run (a boot to the "
                         f"snapshot point with this command line minus -incoming)")
    elif m.keys_over_control():   # a cold boot of the base image: the keys come on the control port
        from vmprobe.guest import rootfs
        m._keys_over_control = True
        initrd = m.guest_image or rootfs.build_base(m.kernel, m.userland).path
    else:
        initrd = m.workdir / "initrd.img"
    cmd = m._qemu_command(initrd, m.workdir / "qmp.sock")
    append = cmd[cmd.index("-append") + 1]
    print(f"kernel: {m.kernel.spec} {m.kernel.release} ({m.kernel.image_path})", file=out)
    print(f"accel: {m.accel}  warm: {'yes' if m.warm else 'no (cold boot)'}", file=out)
    print(f"qemu command line:\n  {shlex.join(cmd)}", file=out)
    print(f"kernel command line:\n  {append}", file=out)
    notes.append("the SSH port (0 here), the nonce and the machine dir are chosen per run")
    for note in notes:
        print(f"note: {note}", file=out)
    return 0


def interactive(machine) -> int:
    """A shell on a pty in the guest, with the local terminal in raw mode."""
    import os
    import select
    import shutil
    import termios
    import tty

    if not sys.stdin.isatty():  # a script on stdin: feed it to the guest's shell
        channel = machine.ssh.start("sh -s")
        channel.sendall(sys.stdin.buffer.read())
        channel.shutdown_write()
        return machine.ssh.wait(channel, "sh -s", 3600, stdout=sys.stdout.buffer,
                                stderr=sys.stderr.buffer).status
    if machine.ssh.name != "ssh":
        raise ConfigError("an interactive shell needs SSH (a pty); over the serial transport, pipe a "
                          "script in: vmprobe shell --transport serial < script.sh")
    size = shutil.get_terminal_size()
    channel = machine.ssh._transport().open_session()
    channel.get_pty(term=os.environ.get("TERM", "vt100"), width=size.columns, height=size.lines)
    channel.invoke_shell()
    saved = termios.tcgetattr(sys.stdin)
    try:
        tty.setraw(sys.stdin.fileno())
        while not channel.exit_status_ready():
            ready, _, _ = select.select([sys.stdin, channel], [], [], 0.5)
            if channel in ready:
                data = channel.recv(65536)
                if not data:
                    break
                os.write(sys.stdout.fileno(), data)
            if sys.stdin in ready:
                data = os.read(sys.stdin.fileno(), 1024)
                if not data:
                    break
                channel.sendall(data)
    finally:
        termios.tcsetattr(sys.stdin, termios.TCSADRAIN, saved)
    return channel.recv_exit_status() if channel.exit_status_ready() else 0

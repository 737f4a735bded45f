"""A QEMU machine running a real kernel, as a context manager that always cleans up.

Everything the machine owns lives in one private (0700) temp dir: the console
log, the QMP and gdbstub unix sockets, the run's initrd. SSH is forwarded from
``127.0.0.1:<free port>``; the guest network is ``restrict=on`` (no way out).
QEMU runs in its own process group with a parent-death signal, and shutdown
goes QMP ``quit`` → SIGTERM → SIGKILL on every path, exceptions and signals
included, then removes the temp dir.

A warm machine (``warm=True``) does not boot: QEMU starts from a saved state
of the same kernel, rootfs and arguments (see ``snapshot``), and the guest is
then sent this run's keys, nonce and clock over a second serial port.
"""
from __future__ import annotations

import atexit
import contextlib
import logging
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING

from qemu.qmp import QMPError
from qemu.qmp.legacy import QEMUMonitorProtocol

from vmprobe.arch import ArchProfile, image_problem, profile_for
from vmprobe.arch.eras import diagnose_boot
from vmprobe.errors import GuestCrash, QemuError, SshError, VmprobeError
from vmprobe.formats.crash import first_fatal
from vmprobe.guest import rootfs
from vmprobe.host import progress
from vmprobe.host.cache import sha256_file
from vmprobe.host.interrupts import checkpoint, deferred_signals
from vmprobe.host.processes import die_with_parent, reap_group, runtime_dir
from vmprobe.kernels import Kernel
from vmprobe.vm import panics, qmp_link
from vmprobe.vm import transport as transports
from vmprobe.vm.accel import choose_accel, qemu_version
from vmprobe.vm.console import Console, raise_qemu_gone
from vmprobe.vm.gdb_ahead import GdbStarter
from vmprobe.vm.guest_shell import GuestShell, WaitingExec
from vmprobe.vm.qemu_command import QemuInputs, free_port, qemu_command
from vmprobe.vm.snapshot import SnapshotUnusable
from vmprobe.vm.transport import GuestTransport

if TYPE_CHECKING:
    from vmprobe.vm.ssh import RunKeys

# the guest's markers, logged through /dev/kmsg (so after a printk timestamp)
READY = r"\bVMPROBE-READY {nonce}(?: ssh=(?P<ssh>[01]))?$"   # ssh=1: its SSH server is up
SNAPSHOT_POINT = r"\bVMPROBE-SNAPSHOT-POINT$"
logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)  # failures surface as QemuError
_live: "weakref.WeakSet[Machine]" = weakref.WeakSet()


class Machine:
    """A booted guest: ``.console``, ``.ssh``, ``.qmp``, ``.gdb_socket``; use ``with``."""

    def __init__(self, kernel: Kernel, *, accel: str = "auto", memory: str = "1G", smp: int = 1,
                 append: tuple[str, ...] = (), boot_timeout: float = 120, ssh_timeout: float = 30,
                 qemu_args: tuple[str, ...] = (), warm: bool = False, log=None,
                 transport: str = "auto", userland: str = "auto", guest_image: Path | None = None,
                 _snapshot_source: Path | None = None):
        self.kernel = kernel
        self.profile: ArchProfile = profile_for(kernel.arch)
        self.requested_accel = accel
        self.memory, self.smp = memory, smp
        self.extra_append, self.qemu_args = tuple(append), tuple(qemu_args)
        self.boot_timeout, self.ssh_timeout = boot_timeout, ssh_timeout
        self.log = log or (lambda msg: None)
        self.nonce = secrets.token_hex(8)
        self.workdir: Path | None = None
        self.proc: subprocess.Popen | None = None
        self.console: Console | None = None
        self.qmp: QEMUMonitorProtocol | None = None
        self.ssh: GuestTransport | None = None   # SSH or the serial agent (vm/transport.py)
        self._shell: GuestShell | None = None    # a long-lived guest shell on the SSH connection
        self.gdbs = GdbStarter(self.profile.gdb_binary, self.profile.gdb_arch)   # gdbs started ahead
        self.transport = transport               # asked for; self.ssh.name: what it got
        self.userland = userland                 # the guest's userland: auto (by era), modern or old
        self.guest_image = guest_image           # an exported guest (rootfs export), booted as it is
        self._keys_over_control = False          # a guest without secrets: they come on the control port
        self._keys: RunKeys | None = None         # this run's SSH keys (run_keys)
        self._keys_ahead: threading.Thread | None = None
        self.accel: str | None = None
        self.ssh_port: int | None = None
        self.command_line: list[str] = []
        self.timings: dict[str, float] = {}
        self._qemu_stderr: Path | None = None
        self._uploaded: dict[str, str] = {}  # guest path → sha256 of what we copied there
        # warm starts: restore from a saved state when the arch has a control port for the keys
        self.warm = bool(warm and self.profile.control_port and not guest_image)
        self._snapshot_source = _snapshot_source   # the initrd, when this machine makes a snapshot
        self._image = None                          # the snapshot (WarmImage) it was restored from
        self._incoming: Path | None = None         # that snapshot's saved state
        self._control: socket.socket | None = None
        self._started = 0.0                        # when QEMU was started (boot timing)
        self.panic_watch = panics.PanicWatch()

    # -- paths ---------------------------------------------------------------
    @property
    def gdb_socket(self) -> Path:
        return self.workdir / "gdb.sock"

    @property
    def console_log(self) -> Path:
        return self.workdir / "console.log"

    # -- lifecycle -----------------------------------------------------------
    def __enter__(self) -> "Machine":
        try:
            with progress.status(f"starting {self.kernel.release}", progress.boot_detail(self)):
                self.launch()
        except BaseException:
            self.shutdown()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    def launch(self) -> None:
        t0 = time.monotonic()
        self.workdir = Path(tempfile.mkdtemp(prefix="vmprobe-", dir=runtime_dir()))
        os.chmod(self.workdir, 0o700)
        _live.add(self)
        if not self._snapshot_source:   # the run's keys, made while QEMU starts
            self._keys_ahead = threading.Thread(target=self._make_keys, name="vmprobe-keys", daemon=True)
            self._keys_ahead.start()
        if problem := image_problem(self.profile, self.kernel.image_path):
            raise QemuError(problem)
        self.accel = choose_accel(self.requested_accel, self.profile, self.kernel.image_path, self.log)
        if self._snapshot_source:
            self._start(self._snapshot_source)
            self.console.expect(SNAPSHOT_POINT, self.boot_timeout,
                                what=f"the guest's snapshot point (boot of {self.kernel.release} "
                                     f"under {self.accel})")
            self.timings["boot"] = time.monotonic() - self._started
            return
        if self.warm:
            try:
                self._restore()
            except SnapshotUnusable as exc:
                from vmprobe.vm.snapshot import discard_snapshot
                self.log(f"vmprobe: {exc.message}; making the snapshot again")
                self._stop_qemu(timeout=1)
                discard_snapshot(self._image.directory)
                self._restore()
        elif self.keys_over_control():
            self._boot_keys_over_control()
        else:   # no control port: the keys go in a second initramfs layer, made before the boot
            base = rootfs.build_base(self.kernel, self.userland, log=self.log)
            keys = self.run_keys()
            initrd = rootfs.assemble(base, rootfs.run_layer(keys.authorized_key, keys.host_key_file),
                                     self.workdir / "initrd.img")
            self.timings["rootfs"] = time.monotonic() - t0
            self._start(initrd)
        ready = self.console.expect(READY.format(nonce=self.nonce), self.boot_timeout,
                            what=f"the guest's READY marker ({'restore' if self._incoming else 'boot'} "
                                 f"of {self.kernel.release} under {self.accel})")
        self.timings["boot"] = time.monotonic() - self._started
        t2 = time.monotonic()
        self.ssh = transports.connect(self, self.run_keys(), self.transport, ssh_up=ready.group("ssh"))
        self.timings["ssh"] = time.monotonic() - t2

    def run_keys(self) -> RunKeys:
        """This run's SSH keys: made by a thread from the launch's start (paramiko's import and two
        dropbearkey runs, ≈0.15 s, while QEMU starts up and loads its state), else here."""
        if self._keys_ahead:
            self._keys_ahead.join()
            self._keys_ahead = None
        return self._keys or self._make_keys(ahead=False)

    def _make_keys(self, ahead: bool = True) -> RunKeys | None:
        from vmprobe.vm.ssh import RunKeys
        try:
            self._keys = RunKeys.generate(self.workdir)
        except Exception:
            if not ahead:   # else made again on use, where the error is raised
                raise
        return self._keys

    def keys_over_control(self) -> bool:
        """Whether a cold boot gets the run's keys over the control port (every arch that has one;
        a guest image without an initrd layer must) rather than in an initramfs layer."""
        return bool(self.guest_image or rootfs.embeds_guest(self.kernel) or self.profile.control_port)

    def _boot_keys_over_control(self) -> None:
        """Boot a guest image that holds no secret (the base image, an exported one, or one built
        into the kernel): at its snapshot point it waits on the control port for this run's line,
        as a restored one does. QEMU starts at once: the keys (and paramiko's import, ≈0.2 s in
        all) are made while the kernel boots."""
        if not self.profile.control_port:
            raise QemuError(f"a guest without secrets needs a control port, which {self.profile.name} lacks")
        self._keys_over_control = True
        self._start(self.guest_image or rootfs.build_base(self.kernel, self.userland, log=self.log).path)
        self.run_keys()
        self.console.expect(SNAPSHOT_POINT, self.boot_timeout, what=f"the guest's snapshot point (boot of "
                            f"{self.kernel.release} from a guest without secrets, under {self.accel})")
        transports.control(self).sendall(self.run_keys().control_line(self.nonce))

    def _start(self, initrd: Path) -> None:
        """Start QEMU on a free loopback port for the SSH forward (retried if taken meanwhile)."""
        self._started = time.monotonic()
        for attempt in range(5):
            self.ssh_port = free_port()
            try:
                self._start_qemu(initrd)
                break
            except qmp_link.PortTaken:
                continue
        else:
            raise QemuError("could not bind a loopback port for the SSH forward after 5 tries")

    # -- warm starts -----------------------------------------------------------
    @property
    def control_socket(self) -> Path:
        return self.workdir / "control.sock"

    def saved_kallsyms(self) -> Path | None:
        """The host copy of /proc/kallsyms shared by the restores of this machine's snapshot
        (read from the first one that asks), or None for a cold machine."""
        if self._image is None:
            return None
        return self._image.kallsyms(lambda: self.run("cat /proc/kallsyms", 120).stdout)

    def _restore(self) -> None:
        from vmprobe.vm.snapshot import ensure_snapshot
        t0 = time.monotonic()
        image = ensure_snapshot(self)
        self._image, self._incoming = image, image.state
        self.timings["snapshot"] = image.made_in
        self.timings["rootfs"] = time.monotonic() - t0 - image.made_in
        checkpoint("rootfs")
        try:
            self._start(image.initrd)
        except QemuError as exc:  # QEMU may refuse the state before QMP is even up
            if "migration" not in exc.message:
                raise
            raise SnapshotUnusable(exc.message, detail=exc.detail, exit_status=exc.exit_status,
                                   command=exc.command, output=exc.output) from None
        self.run_keys()   # while QEMU loads the state
        self._resume()

    def _resume(self, timeout: float = 60) -> None:
        """Wait for QEMU to load the saved state, run the guest, and send it this run's line."""
        deadline = time.monotonic() + timeout
        what = f"the saved state {self._incoming}"
        try:
            while (state := self.qmp.cmd("query-status")["status"]) == "inmigrate":
                if time.monotonic() > deadline:
                    raise QemuError(f"QEMU did not finish loading {what} within {timeout:.0f}s")
                time.sleep(0.01)
        except QMPError:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
            raise SnapshotUnusable(f"QEMU {self._exit_reason() or 'stopped answering'} while loading "
                                   f"{what}", detail=self.qemu_stderr()) from None
        if state != "running":
            self.qmp.cmd("cont")
        transports.control(self).sendall(self.run_keys().control_line(self.nonce))

    def _qemu_command(self, initrd: Path, qmp_path: Path) -> list[str]:
        return qemu_command(QemuInputs(
            profile=self.profile, accel=self.accel, smp=self.smp, memory=self.memory,
            image=self.kernel.image_path, initrd=initrd, nonce=self.nonce, ssh_port=self.ssh_port,
            console_log=self.console_log, qmp_socket=qmp_path, gdb_socket=self.gdb_socket,
            control_socket=self.control_socket,
            warm=bool(self._snapshot_source or self._incoming or self._keys_over_control),
            incoming=self._incoming, extra_append=self.extra_append, qemu_args=self.qemu_args,
            release=self.kernel.release))

    def _start_qemu(self, initrd: Path) -> None:
        listener = qmp_link.listen(self.workdir / "qmp.sock")
        self.command_line = self._qemu_command(initrd, self.workdir / "qmp.sock")
        self._qemu_stderr = self.workdir / "qemu.stderr"
        self.console_log.unlink(missing_ok=True)
        with self._qemu_stderr.open("wb") as err:
            try:
                self.proc = subprocess.Popen(self.command_line, stdin=subprocess.DEVNULL,
                                             stdout=err, stderr=err, start_new_session=True,
                                             preexec_fn=die_with_parent)
            except FileNotFoundError:
                listener.close()
                raise QemuError(f"{self.command_line[0]} not found: install QEMU "
                                f"({qemu_version(self.command_line[0])})", command=self.command_line) from None
        self.console = Console(self.console_log, self._exit_reason,
                               diagnose=lambda text: diagnose_boot(text, self.profile, self.kernel.release))
        self.qmp = qmp_link.connect(listener, self.proc, self.qemu_stderr, self.command_line)
        checkpoint("boot")

    def qemu_stderr(self) -> str:
        with contextlib.suppress(FileNotFoundError):
            return self._qemu_stderr.read_text(errors="replace") if self._qemu_stderr else ""
        return ""

    def _exit_reason(self) -> str | None:
        if self.proc is None or self.proc.poll() is None:
            return None
        code, extra = self.proc.returncode, self.qemu_stderr().strip()
        why, detail = ("exited", f" with status {code}") if code >= 0 else (f"was killed by signal {-code}", "")
        if code >= 0 and self.panic_watch.poll(self.qmp, drain=True):
            detail += " " + panics.PANIC_NOTE
        return f"{why}{detail}" + (f" ({extra[-300:]})" if extra else "")

    def check_alive(self, grace: float = 0.0, since: int = 0, what: str = "the guest") -> None:
        """Raise if QEMU is gone or the console shows a fatal crash after ``since``; with ``grace``,
        keep looking that long (an SSH drop is often seen before QEMU's exit or the panic's end)."""
        deadline = time.monotonic() + grace
        while True:
            reason = self._exit_reason()
            if reason:
                raise_qemu_gone(reason, what, self.console)
            crash = first_fatal(self.console.since(since))
            if crash:
                raise GuestCrash(f"the guest kernel crashed ({crash.title}) while waiting for {what}",
                                 detail=crash.excerpt)
            if time.monotonic() >= deadline:
                return
            time.sleep(0.05)

    @deferred_signals()  # Ctrl-C here would leave QEMU or its dir behind: it acts once this is done
    def shutdown(self, timeout: float = 5) -> None:
        """Stop QEMU (QMP quit → SIGTERM → SIGKILL) and remove everything it used."""
        if self.proc and self.proc.poll() is None:
            checkpoint("shutdown")
        self._shell = self._shell and self._shell.close()
        if self._keys_ahead:   # its dropbearkey writes in the machine's dir, removed below
            self._keys_ahead.join(35)
        self.gdbs.close()
        if self.ssh:
            with contextlib.suppress(Exception):
                self.ssh.close()
            self.ssh = None
        self._stop_qemu(timeout)
        if self.console:
            self.console.refresh()  # keep the final text readable after the dir is gone
        if self.workdir and self.workdir.exists():
            shutil.rmtree(self.workdir, ignore_errors=True)
        _live.discard(self)

    def _stop_qemu(self, timeout: float) -> None:
        if self._control:
            self._control.close()
            self._control = None
        if self.proc and self.proc.poll() is None and self.qmp:
            self.panic_watch.poll(self.qmp)
            with contextlib.suppress(Exception):
                self.qmp.cmd("quit")
        if self.qmp:
            with contextlib.suppress(Exception):
                self.qmp.close()
            self.qmp = None
        if self.proc:
            reap_group(self.proc, timeout)

    # -- conveniences --------------------------------------------------------
    def upload(self, local: Path, remote: str, mode: int = 0o644) -> None:
        """Copy a file in (streamed over SSH), unless this boot already has the same bytes there."""
        digest = sha256_file(local)
        if self._uploaded.get(remote) == digest:
            return
        self.ssh.put(local, remote, mode)
        self._uploaded[remote] = digest

    def run(self, command: str, timeout: float = 60, *, allow_crash: bool = False, alone: bool = False, **kw):
        """Run a command in the guest: in the long-lived guest shell over SSH (vm/guest_shell.py), else
        (or ``alone``: a lone command, 30 ms less) an SSH exec of its own or the serial agent. A kernel
        crash meanwhile raises GuestCrash with the report's title, not the SSH failure it causes
        (``allow_crash``: the caller reads the console); splats it survives stay on the console."""
        mark, what = self.console.mark(), f"{command!r} to finish"
        try:
            self._shell = GuestShell.of(self.ssh, self._shell)
            result = ((not alone and self._shell and self._shell.run(command, timeout, **kw))
                      or self.ssh.run(command, timeout, **kw))
        except SshError:
            self.check_alive(grace=5, since=mark, what=what)
            raise
        except VmprobeError:
            self.check_alive(since=mark, what=what)
            raise
        if not allow_crash:
            panics.raise_if_fatal(self.console.since(mark), f"while running {command!r}")
        return result

    def prepare(self, command: str):
        """``command`` ready to start: ``go()`` waits on nothing in the guest (it may be stopped at a
        breakpoint by then), ``wait(timeout)`` returns its CommandResult, else ``abandon()``."""
        self._shell = GuestShell.of(self.ssh, self._shell)
        return (self._shell and self._shell.prepare(command)) or WaitingExec(self.ssh, command)


@atexit.register
def _kill_leftovers() -> None:
    for machine in list(_live):
        with contextlib.suppress(Exception):
            machine.shutdown(timeout=1)

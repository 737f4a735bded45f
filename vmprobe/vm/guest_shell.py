"""One long-lived shell in the guest: a command costs a fork and exec of ``sh``, not an SSH session.

Every SSH exec makes dropbear fork a session and exec ``sh -c``; under TCG that
is 0.1–0.3 s of guest time per command, and a probe check runs a dozen short
commands. This keeps one ``sh`` reading commands on a channel's stdin. Each
command runs as ``sh -c 'COMMAND' </dev/null``, as an SSH exec would run it
(``$$`` is its own shell's pid, as scripts that arm a probe for "this shell's
forks" expect; ``exit``, ``cd`` or variables cannot touch the next command;
stdin is not the command stream),
followed by a marker with a fresh nonce on stdout (with the exit status) and
on stderr: the output is what came before the markers.

A command that outlives its timeout takes the shell with it (its channel is
closed; the next command opens a new shell), as an SSH exec's channel would
be. Only one command runs in the shell at a time; callers that find it busy
use an SSH exec of their own (``Machine.run`` does).
"""
from __future__ import annotations

import secrets
import select
import shlex
import threading
import time
from typing import TYPE_CHECKING, BinaryIO

from vmprobe.errors import CommandTimeout, SshError
from vmprobe.vm.results import CommandResult

if TYPE_CHECKING:
    import paramiko

    from vmprobe.vm.ssh import GuestSsh

POLL = 0.05   # longest wait between looks at a quiet channel (data wakes it at once)


class _Stream:
    """One of the command's output streams: bytes up to the marker, passed on as they come
    (all but a tail that could be the start of the marker)."""

    def __init__(self, marker: bytes, sink: BinaryIO | None):
        self.marker, self.sink = marker, sink
        self.buf = bytearray()
        self.passed = 0
        self.end: int | None = None    # where the marker starts, once seen

    def feed(self, chunk: bytes) -> None:
        start = max(0, len(self.buf) - len(self.marker) + 1)
        self.buf += chunk
        if self.end is None:
            at = self.buf.find(self.marker, start)
            if at >= 0:
                self.end = at
        if self.sink is not None:
            upto = self.end if self.end is not None else max(self.passed, len(self.buf) - self._held())
            if upto > self.passed:
                self.sink.write(bytes(self.buf[self.passed:upto]))
                self.sink.flush()
                self.passed = upto

    def _held(self) -> int:
        """How many trailing bytes could be the start of the marker (held back until known)."""
        for n in range(min(len(self.marker) - 1, len(self.buf)), 0, -1):
            if self.buf.endswith(self.marker[:n]):
                return n
        return 0

    @property
    def output(self) -> bytes:
        return bytes(self.buf[:self.end]) if self.end is not None else bytes(self.buf)

    def after_marker(self) -> bytes:
        return bytes(self.buf[self.end + len(self.marker):]) if self.end is not None else b""


class GuestShell:
    """A persistent ``sh`` on one channel of ``ssh``'s connection."""

    def __init__(self, ssh: "GuestSsh"):
        self.ssh = ssh
        self.channel: "paramiko.Channel | None" = None
        self.lock = threading.Lock()

    @classmethod
    def of(cls, transport, current: "GuestShell | None") -> "GuestShell | None":
        """The shell for ``transport``: ``current`` if it is on it, a new one, or None when the
        transport is not SSH (the serial agent is a shell loop already)."""
        if getattr(transport, "name", None) != "ssh":
            return None
        return current if current is not None and current.ssh is transport else cls(transport)

    def _open(self) -> "paramiko.Channel":
        if self.channel is None or self.channel.closed or self.channel.exit_status_ready():
            self.close()
            self.channel = self.ssh.start("exec sh")
        return self.channel

    def run(self, command: str, timeout: float = 60, *, check: bool = False,
            stdout: BinaryIO | None = None, stderr: BinaryIO | None = None) -> CommandResult | None:
        """Run ``command`` in the shell; None when the shell is busy (run it some other way)."""
        started = self.prepare(command)
        if started is None:
            return None
        started.go()
        return started.wait(timeout, check=check, stdout=stdout, stderr=stderr)

    def prepare(self, command: str) -> "Started | None":
        """``command`` ready to go at once (``go()`` only writes a line: nothing waits on the
        guest, which may be stopped at a breakpoint); None when the shell is busy. The shell
        is held until ``wait()``."""
        if not self.lock.acquire(blocking=False):
            return None
        try:
            return Started(self, self._open(), command)
        except BaseException:
            self.lock.release()
            raise

    def close(self) -> None:
        if self.channel is not None:
            try:
                self.channel.close()
            except Exception:  # noqa: BLE001  (closing a dead channel)
                pass
            self.channel = None


class Started:
    """A command in the guest shell: written by ``go()``, read to its markers by ``wait()``."""

    def __init__(self, shell: GuestShell, channel: "paramiko.Channel", command: str):
        self.shell, self.channel, self.command = shell, channel, command
        self.nonce = f"vmprobe-sh-{secrets.token_hex(8)}"
        self.sent = False

    def go(self) -> None:
        line = (f"sh -c {shlex.quote(self.command)} </dev/null; printf '%s %d\\n' {self.nonce} $?; "
                f"printf '%s\\n' {self.nonce} >&2\n")
        try:
            _drain(self.channel)   # late output of an earlier command's background job is not this one's
            self.channel.sendall(line.encode())
            self.sent = True
        except BaseException:
            self._fail()
            raise

    def wait(self, timeout: float, *, check: bool = False, stdout: BinaryIO | None = None,
             stderr: BinaryIO | None = None) -> CommandResult:
        """The command's result; the shell is free again after it (or gone, after a failure)."""
        if not self.sent:
            self.abandon()
            raise SshError(f"{self.command!r} was never started in the guest's shell")
        channel, command = self.channel, self.command
        out, err = _Stream(f"{self.nonce} ".encode(), stdout), _Stream(f"{self.nonce}\n".encode(), stderr)
        deadline = time.monotonic() + timeout
        try:
            while out.end is None or b"\n" not in out.after_marker() or err.end is None:
                select.select([channel], [], [], POLL)   # either stream has data, or it closed
                got = False
                while channel.recv_ready():
                    out.feed(channel.recv(65536))
                    got = True
                while channel.recv_stderr_ready():
                    err.feed(channel.recv_stderr(65536))
                    got = True
                if not got and (channel.closed or channel.eof_received or channel.exit_status_ready()):
                    detail = (out.output + err.output).decode(errors="replace")[-2000:] or None
                    transport = channel.get_transport()
                    if transport is None or not transport.is_active():   # worded as GuestSsh.run does
                        raise SshError(f"the SSH connection to the guest dropped while running {command!r}",
                                       detail=detail)
                    raise SshError(f"the guest's shell ended while running {command!r}", detail=detail)
                if time.monotonic() > deadline:
                    raise CommandTimeout(f"{command!r} did not finish within {timeout:.0f}s in the guest",
                                         detail=(out.output + err.output).decode(errors="replace")[-2000:] or None)
                if not got:
                    self.shell.ssh._transport()   # raises if the connection dropped
        except BaseException:
            self._fail()
            raise
        self.shell.lock.release()
        status = int(out.after_marker().split(b"\n", 1)[0])
        result = CommandResult(status, out.output.decode(errors="replace"), err.output.decode(errors="replace"))
        if check and status != 0:
            raise SshError(f"{command!r} failed in the guest (exit {status})", detail=result.output[-2000:] or None)
        return result

    def abandon(self) -> None:
        """Never waited for (an error in between): free the shell, or drop it if the command went."""
        if self.sent:
            self._fail()
        else:
            self.shell.lock.release()

    def _fail(self) -> None:
        """The shell's state is unknown now: drop it (the next command gets a new one)."""
        self.shell.close()
        self.shell.lock.release()


class WaitingExec:
    """Where there is no shell to use: a command on a channel of its own, waiting for a line on
    its stdin to start (the same ``go``/``wait``/``abandon`` as :class:`Started`)."""

    def __init__(self, transport, command: str):
        self.transport, self.command = transport, command
        self.channel = transport.start(f"read -r _go; {command}")

    def go(self) -> None:
        self.channel.sendall(b"go\n")

    def wait(self, timeout: float, **kw) -> CommandResult:
        return self.transport.wait(self.channel, self.command, timeout, **kw)

    def abandon(self) -> None:
        try:
            self.channel.close()
        except Exception:  # noqa: BLE001  (closing a dead channel)
            pass


def _drain(channel: "paramiko.Channel") -> None:
    while channel.recv_ready():
        channel.recv(65536)
    while channel.recv_stderr_ready():
        channel.recv_stderr(65536)

"""SSH into the guest with paramiko: per-run keys, a pinned host key, bounded waits."""
from __future__ import annotations

import base64
import contextlib
import logging
import secrets
import select
import shlex
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable

import paramiko
from tenacity import RetryError, Retrying, retry_if_exception_type, stop_after_delay, wait_fixed

from vmprobe.errors import CommandTimeout, ConfigError, SshError
from vmprobe.host.interrupts import checkpoint
from vmprobe.vm.results import CommandResult

logging.getLogger("paramiko").setLevel(logging.CRITICAL)
POLL = 0.05   # longest wait between looks at a quiet channel (data or EOF wakes it at once)


@dataclass(frozen=True)
class RunKeys:
    """A client key and a guest host key, made fresh for one run, never stored."""

    client: paramiko.PKey
    host_key_file: bytes          # dropbear's format, goes into the initramfs
    host_public: paramiko.PKey    # what the guest must present

    @property
    def authorized_key(self) -> str:
        return f"{self.client.get_name()} {self.client.get_base64()} vmprobe-run"

    @classmethod
    def generate(cls, workdir: Path) -> "RunKeys":
        client = paramiko.ECDSAKey.generate(bits=256)
        key_path = workdir / "guest_host_key"
        try:
            subprocess.run(["dropbearkey", "-t", "ed25519", "-f", str(key_path)],
                           check=True, capture_output=True, timeout=30)
            out = subprocess.run(["dropbearkey", "-y", "-f", str(key_path)], check=True,
                                 capture_output=True, text=True, timeout=30).stdout
        except FileNotFoundError:
            raise ConfigError("dropbearkey not found: install dropbear-bin") from None
        line = next(l for l in out.splitlines() if l.startswith("ssh-ed25519 "))
        host_public = paramiko.Ed25519Key(data=base64.b64decode(line.split()[1]))
        data = key_path.read_bytes()
        key_path.unlink()
        return cls(client, data, host_public)

    def control_line(self, nonce: str) -> bytes:
        """The line a guest waiting on its control port (rootfs/init, vmprobe.warm) gets: the run's
        nonce, wall clock, a random seed and keys, so its image never holds a secret. The host key
        comes as printf ``%b`` escapes and the authorized key as the rest of the line: the guest
        writes both with shell builtins (no fork on the warm path)."""
        host_key = "".join(f"\\0{b:o}" for b in self.host_key_file)
        return (" ".join((nonce, str(int(time.time())), secrets.token_hex(32), host_key,
                          self.authorized_key)) + "\n").encode()


class GuestSsh:
    """One SSH connection to the guest (through QEMU's loopback forward)."""

    name = "ssh"

    def __init__(self, port: int, keys: RunKeys, host: str = "127.0.0.1"):
        self.host, self.port, self.keys = host, port, keys
        self.client: paramiko.SSHClient | None = None

    def connect(self, timeout: float, alive: Callable[[], None] | None = None) -> None:
        """Connect, retrying until ``timeout``; ``alive()`` raises if the VM is gone."""
        checkpoint("ssh")

        def attempt() -> None:
            if alive:
                alive()
            client = paramiko.SSHClient()
            client.get_host_keys().add(f"[{self.host}]:{self.port}", self.keys.host_public.get_name(),
                                       self.keys.host_public)
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
            try:
                client.connect(self.host, self.port, username="root", pkey=self.keys.client,
                               timeout=5, banner_timeout=5, auth_timeout=5, look_for_keys=False,
                               allow_agent=False)
            except BaseException:
                client.close()
                raise
            self.client = client

        retryer = Retrying(stop=stop_after_delay(timeout), wait=wait_fixed(0.2), reraise=False,
                           retry=retry_if_exception_type((OSError, paramiko.SSHException, EOFError)))
        try:
            retryer(attempt)
        except RetryError as exc:
            last = exc.last_attempt.exception()
            raise SshError(f"could not connect to the guest's SSH server on {self.host}:{self.port} "
                           f"within {timeout:.0f}s: {last!r}") from None
        except paramiko.BadHostKeyException as exc:
            raise SshError(f"the guest presented an unexpected host key: {exc}") from None

    def _transport(self) -> paramiko.Transport:
        if not self.client or not (t := self.client.get_transport()) or not t.is_active():
            raise SshError("the SSH connection to the guest is closed")
        return t

    def start(self, command: str, timeout: float = 15) -> paramiko.Channel:
        """Start a command and return its channel without waiting for it to finish.

        paramiko's exec_command waits for the server's answer with no deadline;
        it runs in a helper thread here so a stopped or dead guest cannot hang us.
        A refused request is retried briefly; a channel the server already sent
        EOF on is not (the command ran: seen with dropbear right after SFTP).
        """
        deadline = time.monotonic() + min(timeout, 5)
        while True:
            channel = self._open_session(command, timeout)
            failure = self._exec(channel, command, timeout)
            if failure is None:
                return channel
            channel.close()
            # "Channel closed." / "Channel is not open": the request was refused, nothing ran
            # ... unless the server sent EOF on it: then the command ran (never run it twice)
            refused = isinstance(failure, paramiko.SSHException) and not channel.eof_received
            if not refused or time.monotonic() >= deadline or not self._transport().is_active():
                ran = " (it ran, but its channel closed without an answer)" if channel.eof_received else ""
                raise SshError(f"could not start {command!r} in the guest{ran}: {failure or 'channel closed'}")
            time.sleep(0.05)

    @staticmethod
    def _exec(channel: paramiko.Channel, command: str, timeout: float) -> BaseException | None:
        failure: list[BaseException] = []

        def request() -> None:
            try:
                channel.exec_command(command)
            except BaseException as exc:  # reported to the caller
                failure.append(exc)

        worker = threading.Thread(target=request, name="vmprobe-ssh-exec", daemon=True)
        worker.start()
        worker.join(timeout)
        if worker.is_alive():
            channel.close()
            worker.join(1)
            raise CommandTimeout(f"the guest did not accept the command {command!r} within {timeout:.0f}s")
        return failure[0] if failure else None

    def _open_session(self, command: str, timeout: float) -> paramiko.Channel:
        """Open a channel; dropbear refuses one for a moment after an SFTP session
        ends (the subsystem is still being reaped), so refusals are retried briefly."""
        deadline = time.monotonic() + min(timeout, 5)
        while True:
            transport = self._transport()
            try:
                return transport.open_session(timeout=timeout)
            except (paramiko.SSHException, OSError, EOFError) as exc:
                # ChannelException, or "Unable to open channel." while the connection lives on
                if not transport.is_active() or time.monotonic() >= deadline:
                    raise SshError(f"could not open an SSH channel to the guest for {command!r}: {exc}") from None
                time.sleep(0.05)

    def run(self, command: str, timeout: float = 60, *, check: bool = False,
            stdout: BinaryIO | None = None, stderr: BinaryIO | None = None) -> CommandResult:
        """Run a command; its output is returned (and streamed when files are given). Its stdin
        is at end of file at once (nothing can be fed to it here): a command that reads it ends."""
        channel = self.start(command)
        with contextlib.suppress(OSError, EOFError, paramiko.SSHException):   # it may have ended already
            channel.shutdown_write()
        return self.wait(channel, command, timeout, check=check, stdout=stdout, stderr=stderr)

    def wait(self, channel: paramiko.Channel, command: str, timeout: float, *, check: bool = False,
             stdout: BinaryIO | None = None, stderr: BinaryIO | None = None) -> CommandResult:
        deadline = time.monotonic() + timeout
        out, err = bytearray(), bytearray()
        try:
            while True:
                select.select([channel], [], [], POLL)   # either stream has data, or EOF
                got = False
                for ready, recv, buf, sink in ((channel.recv_ready, channel.recv, out, stdout),
                                               (channel.recv_stderr_ready, channel.recv_stderr, err, stderr)):
                    while ready():
                        chunk = recv(65536)
                        got = True
                        buf += chunk
                        if sink:
                            sink.write(chunk)
                            sink.flush()
                if (channel.exit_status_ready() and not got and not channel.recv_ready()
                        and not channel.recv_stderr_ready()):
                    break
                if channel.closed and not channel.exit_status_ready():
                    raise SshError(f"the guest dropped the SSH channel running {command!r}")
                if time.monotonic() > deadline:
                    raise CommandTimeout(f"{command!r} did not finish within {timeout:.0f}s in the guest",
                                         detail=(out + err).decode(errors="replace")[-2000:] or None)
                if not got:
                    self._transport()
                    if channel.eof_received:   # the exit status is on its way: select would not wait
                        time.sleep(0.005)
            status = channel.recv_exit_status()
            if status == -1:  # the channel closed without an exit status
                transport = self.client.get_transport() if self.client else None
                if transport is None or not transport.is_active():
                    raise SshError(f"the SSH connection to the guest dropped while running {command!r}",
                                   detail=(out + err).decode(errors="replace")[-2000:] or None)
                status = 255  # killed by a signal (exit-signal), as ssh(1) reports it
        finally:
            channel.close()
        result = CommandResult(status, out.decode(errors="replace"), err.decode(errors="replace"))
        if check and status != 0:
            raise SshError(f"{command!r} failed in the guest (exit {status})",
                           detail=result.output[-2000:] or None)
        return result

    def put(self, local: Path, remote: str, mode: int = 0o644, timeout: float = 60) -> None:
        """Copy a file into the guest: streamed to ``cat`` into a temp name, then renamed.

        Not SFTP: dropbear, asked to exec right after an SFTP session ends, may
        run the command and close its channel without answering the request
        (seen ≈1 in 15 under load), which made a retried ``insmod`` run twice.
        """
        part = f"{remote}.part-{secrets.token_hex(4)}"
        command = (f"cat > {shlex.quote(part)} && chmod {mode:o} {shlex.quote(part)} && "
                   f"mv -f {shlex.quote(part)} {shlex.quote(remote)}")
        try:
            data = local.read_bytes()
        except OSError as exc:
            raise SshError(f"could not read {local} to copy it to the guest: {exc}") from None
        channel = self.start(command)
        try:
            channel.settimeout(timeout)
            channel.sendall(data)
            channel.shutdown_write()
        except (paramiko.SSHException, OSError, EOFError) as exc:
            channel.close()
            raise SshError(f"could not copy {local} to the guest's {remote}: {exc}") from None
        result = self.wait(channel, f"copying {local.name} to {remote}", timeout)
        if result.status != 0:
            raise SshError(f"could not copy {local} to the guest's {remote} (exit {result.status})",
                           detail=result.output[-2000:] or None)

    def close(self) -> None:
        if self.client:
            self.client.close()
            self.client = None

"""Commands and uploads over a serial port: the transport for guests without SSH.

The guest side is ``rootfs/agent``, a busybox shell loop on the control port
(the second serial port; the console stays on the first, so no kernel message
can interleave with a reply). Every request carries a fresh nonce and every
reply line starts with it, so a late line of an abandoned command is dropped
instead of being taken for the answer to the next one. Payloads are base64
(binary-safe on any tty); outputs over 8 KiB come gzipped. A command's
stdout and stderr come back apart with its exit status and their byte counts
(checked); uploads go gzipped, in checksummed chunks (md5 each, retried, and
a sha256 of the whole file before it is renamed into place). A UART moves a
few KiB/s under TCG (measured in the README): gzip matters. Every wait is bounded and
says what it waited for.

Requests (host → guest), one line each, ``<op> <nonce> <fields…>``::

    H n                      hello            → "n hello ssh=0|1"
    X n B64CMD               run, stdin /dev/null
    S n B64CMD               start, stdin a fifo → "n +"
    I n B64DATA / C n / K n  stdin data / close stdin / kill
    P n B64PATH MODE SHA256  begin an upload  → "n ok"
    D n SEQ LEN MD5 + data   a chunk of the gzipped file → "n ok SEQ" | "n bad SEQ"
    F n                      gunzip, check, rename → "n ok" | "n bad sha256 …"

Output: ``n 1 B64`` / ``n 2 B64`` lines (``z1``/``z2``: gzipped), then
``n = STATUS OUTBYTES ERRBYTES``.
"""
from __future__ import annotations

import base64
import gzip
import hashlib
import secrets
import select
import socket
import time
from pathlib import Path
from typing import BinaryIO, Callable

from vmprobe.errors import CommandTimeout, SshError
from vmprobe.host.interrupts import checkpoint
from vmprobe.vm.results import CommandResult

CHUNK = 24 * 1024     # raw bytes per upload chunk: 32 KiB of base64, under any kernel's tty buffers
STDIN_PIECE = 24 * 1024
HELLO_RETRY = 0.03    # the agent may not have its port open yet: a hello is resent after this,
HELLO_RETRY_MAX = 0.4  # then at doubling intervals up to this


class SerialError(SshError):
    """The guest's serial agent could not be reached, or its reply was broken (exit 71, as SSH)."""

    kind = "guest transport failed"


def new_nonce() -> str:
    return secrets.token_hex(6)


def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def request(op: str, nonce: str, *fields: str) -> bytes:
    """One request line; fields must be single words (base64, numbers, hex)."""
    words = (op, nonce, *fields)
    if any(not w or any(c.isspace() for c in w) for w in words):
        raise ValueError(f"a request field is empty or has whitespace: {words!r}")
    return (" ".join(words) + "\n").encode()


class FrameReader:
    """Splits the port's bytes into lines and files them by nonce; lines of nonces
    nobody waits for (an abandoned command, echo, noise) are dropped."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.lines: dict[str, list[list[str]]] = {}

    def expect(self, nonce: str) -> None:
        self.lines.setdefault(nonce, [])

    def forget(self, nonce: str) -> None:
        self.lines.pop(nonce, None)

    def feed(self, data: bytes) -> None:
        self._buf += data
        if b"\n" not in data:
            return
        *complete, rest = self._buf.split(b"\n")
        self._buf = bytearray(rest)
        for raw in complete:
            parts = raw.strip(b"\r\0").decode("ascii", errors="replace").split(" ")
            if len(parts) >= 2 and parts[0] in self.lines:
                self.lines[parts[0]].append(parts[1:])


def decode_output(lines: list[list[str]]) -> tuple[int, bytes, bytes] | None:
    """A command's (status, stdout, stderr) from its reply lines; None until the end line came.

    Raises SerialError when the reply is damaged (bad base64, byte counts that do not match).
    """
    end = next((parts for parts in lines if parts[0] == "="), None)
    if end is None:
        return None
    streams: dict[str, list[str]] = {"1": [], "2": [], "z1": [], "z2": []}
    for parts in lines:
        if parts[0] in streams and len(parts) == 2:
            streams[parts[0]].append(parts[1])
    try:
        status, sizes = int(end[1]), (int(end[2]), int(end[3]))
        out, err = (gzip.decompress(base64.b64decode("".join(streams["z" + s])))
                    if streams["z" + s] else base64.b64decode("".join(streams[s])) for s in "12")
    except (ValueError, IndexError, OSError, EOFError) as exc:
        raise SerialError(f"the guest's reply over the serial port is damaged: {exc}") from None
    if (len(out), len(err)) != sizes:
        raise SerialError(f"the guest's reply over the serial port is incomplete: got {len(out)}+{len(err)} "
                          f"bytes of output, the guest sent {sizes[0]}+{sizes[1]}")
    return status, out, err


class SerialChannel:
    """A started command (``SerialTransport.start``): feed its stdin, then ``wait`` for it."""

    def __init__(self, transport: "SerialTransport", nonce: str, command: str):
        self.transport, self.nonce, self.command = transport, nonce, command
        self.closed = False

    def sendall(self, data: bytes) -> None:
        for off in range(0, len(data), STDIN_PIECE):
            self.transport.send(request("I", self.nonce, b64(data[off:off + STDIN_PIECE])))

    def shutdown_write(self) -> None:
        self.transport.send(request("C", self.nonce))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.nonce in self.transport.reader.lines:  # still running: stop it
                self.transport.kill(self.nonce)


class SerialTransport:
    """Commands and files over a connected stream to the guest's agent port."""

    name = "serial"

    def __init__(self, sock: socket.socket, *, alive: Callable[[], None] | None = None, port: str = "ttyS1"):
        self.sock, self.alive, self.port = sock, alive, port
        self.reader = FrameReader()
        self.ssh_available: bool | None = None

    # -- the wire ---------------------------------------------------------------
    def send(self, data: bytes) -> None:
        try:
            self.sock.settimeout(10)
            self.sock.sendall(data)
        except OSError as exc:
            raise SerialError(f"could not write to the guest's serial port {self.port}: {exc}") from None

    def _pump(self, deadline: float) -> None:
        wait = max(0.0, min(0.1, deadline - time.monotonic()))
        ready, _, _ = select.select([self.sock], [], [], wait)
        if ready:
            try:
                data = self.sock.recv(1 << 16)
            except OSError as exc:
                raise SerialError(f"could not read the guest's serial port {self.port}: {exc}") from None
            if not data:
                raise SerialError(f"the guest's serial port {self.port} closed (QEMU gone?)")
            self.reader.feed(data)

    def _await(self, nonce: str, done: Callable[[list[list[str]]], object], timeout: float, what: str):
        """Read until ``done(lines of nonce)`` is not None; CommandTimeout after ``timeout``."""
        deadline = time.monotonic() + timeout
        checked = 0.0
        while True:
            got = done(self.reader.lines[nonce])
            if got is not None:
                return got
            now = time.monotonic()
            if now >= deadline:
                raise CommandTimeout(f"{what} did not finish within {timeout:.0f}s in the guest "
                                     f"(serial transport on {self.port})")
            if self.alive and now - checked > 0.5:
                checked = now
                self.alive()
            self._pump(deadline)

    def _reply(self, nonce: str, timeout: float, what: str) -> list[str]:
        return self._await(nonce, lambda lines: lines.pop(0) if lines else None, timeout, what)

    # -- the interface Machine uses (as GuestSsh's) ---------------------------------
    def hello(self, timeout: float) -> None:
        """Wait for the agent to answer (it opens its port late in the boot); learn if SSH runs.

        A hello written before the agent set its port up is lost: another is sent after
        HELLO_RETRY, then at doubling intervals (at most HELLO_RETRY_MAX), and an answer to
        any of them counts (a slow agent's late answer is not thrown away)."""
        checkpoint("ssh")
        deadline = time.monotonic() + timeout
        sent: list[str] = []
        retry, checked = HELLO_RETRY, 0.0
        try:
            while True:
                nonce = new_nonce()
                self.reader.expect(nonce)
                sent.append(nonce)
                self.send(request("H", nonce))
                resend = min(deadline, time.monotonic() + retry)
                retry = min(retry * 2, HELLO_RETRY_MAX)
                while True:
                    for n in sent:
                        lines = self.reader.lines[n]
                        while lines:
                            answer = lines.pop(0)
                            if answer[0] == "hello":
                                self.ssh_available = "ssh=1" in answer
                                return
                    now = time.monotonic()
                    if now >= deadline:
                        raise SerialError(f"the guest's serial agent on {self.port} did not answer within "
                                          f"{timeout:.0f}s (is /bin/vmprobe-agent in its initramfs?)")
                    if now >= resend:
                        break
                    if self.alive and now - checked > 0.5:
                        checked = now
                        self.alive()
                    self._pump(resend)
        finally:
            for n in sent:
                self.reader.forget(n)

    def run(self, command: str, timeout: float = 60, *, check: bool = False,
            stdout: BinaryIO | None = None, stderr: BinaryIO | None = None) -> CommandResult:
        nonce = new_nonce()
        self.reader.expect(nonce)
        self.send(request("X", nonce, b64(command)))
        return self._result(nonce, command, timeout, check, stdout, stderr)

    def start(self, command: str, timeout: float = 15) -> SerialChannel:
        nonce = new_nonce()
        self.reader.expect(nonce)
        self.send(request("S", nonce, b64(command)))
        parts = self._reply(nonce, timeout, f"starting {command!r}")
        if parts[0] != "+":
            self.reader.forget(nonce)
            raise SerialError(f"could not start {command!r} in the guest: {' '.join(parts[1:])}")
        return SerialChannel(self, nonce, command)

    def wait(self, channel: SerialChannel, command: str, timeout: float, *, check: bool = False,
             stdout: BinaryIO | None = None, stderr: BinaryIO | None = None) -> CommandResult:
        try:
            return self._result(channel.nonce, command, timeout, check, stdout, stderr)
        finally:
            channel.closed = True

    def kill(self, nonce: str) -> None:
        self.reader.forget(nonce)
        try:
            self.send(request("K", nonce))
        except SerialError:
            pass

    def _result(self, nonce, command, timeout, check, stdout, stderr) -> CommandResult:
        try:
            status, out, err = self._await(nonce, decode_output, timeout, repr(command))
        except CommandTimeout:
            self.kill(nonce)
            raise
        finally:
            self.reader.forget(nonce)
        for sink, data in ((stdout, out), (stderr, err)):
            if sink and data:
                sink.write(data)
                sink.flush()
        result = CommandResult(status, out.decode(errors="replace"), err.decode(errors="replace"))
        if check and status != 0:
            raise SerialError(f"{command!r} failed in the guest (exit {status})",
                              detail=result.output[-2000:] or None)
        return result

    def put(self, local: Path, remote: str, mode: int = 0o644, timeout: float = 60) -> None:
        """Copy a file in: its gzip stream in chunks of base64, each md5-checked (and resent
        up to twice), then the whole file's sha256 in the guest, then a rename into place."""
        try:
            data = local.read_bytes()
        except OSError as exc:
            raise SerialError(f"could not read {local} to copy it to the guest: {exc}") from None
        deadline = time.monotonic() + timeout
        left = lambda: max(0.1, deadline - time.monotonic())  # noqa: E731
        what = f"copying {local.name} to {remote}"
        nonce = new_nonce()
        self.reader.expect(nonce)
        try:
            self.send(request("P", nonce, b64(remote), f"{mode:o}", hashlib.sha256(data).hexdigest()))
            if (parts := self._reply(nonce, left(), what))[0] != "ok":
                raise SerialError(f"could not copy {local} to the guest: {' '.join(parts[1:])}")
            packed = gzip.compress(data, compresslevel=9, mtime=0)
            for seq, off in enumerate(range(0, len(packed), CHUNK)):
                chunk = packed[off:off + CHUNK]
                text = base64.b64encode(chunk)
                for _attempt in range(3):
                    self.send(request("D", nonce, str(seq), str(len(text)), hashlib.md5(chunk).hexdigest()) + text)
                    if self._reply(nonce, left(), what)[0] == "ok":
                        break
                else:
                    raise SerialError(f"chunk {seq} of {local} failed its checksum in the guest 3 times")
            self.send(request("F", nonce))
            if (parts := self._reply(nonce, left(), what))[0] != "ok":
                raise SerialError(f"{local} arrived damaged in the guest ({' '.join(parts[1:])})")
        finally:
            self.reader.forget(nonce)

    def close(self) -> None:
        """The socket is the machine's control connection: the machine closes it."""
        self.reader.lines.clear()

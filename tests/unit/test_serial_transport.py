"""The serial transport's framing, and the real guest agent (rootfs/agent) driven over a
host pty with busybox, as the guest runs it: no VM needed."""
from __future__ import annotations

import base64
import gzip
import hashlib
import os
import pty
import shutil
import signal
import subprocess
import tty

import pytest

from vmprobe.config import ROOTFS_DIR
from vmprobe.errors import CommandTimeout
from vmprobe.vm.serial_transport import FrameReader, SerialError, SerialTransport, decode_output, request


def test_request_lines_are_single_words():
    assert request("X", "ab12", "Zm9v") == b"X ab12 Zm9v\n"
    for bad in ("a b", "", "x\n"):
        with pytest.raises(ValueError):
            request("X", "ab12", bad)


def test_reader_splits_lines_across_reads_and_drops_strangers():
    r = FrameReader()
    r.expect("n1")
    for piece in (b"n1 1 aGk", b"=\r\nn2 1 eA==\nnoise line\n", b"n1 = 0 2", b" 0\n"):
        r.feed(piece)
    assert r.lines == {"n1": [["1", "aGk="], ["=", "0", "2", "0"]]}
    r.forget("n1")
    r.feed(b"n1 = 1 0 0\n")       # a late line of an abandoned command: dropped
    assert r.lines == {}


def _lines(text: str) -> list[list[str]]:
    return [line.split(" ")[1:] for line in text.strip().splitlines()]


def test_decode_output_plain_and_gzipped():
    assert decode_output(_lines("n 1 aGk=")) is None            # no end line yet
    out = base64.b64encode(gzip.compress(b"x" * 10000)).decode()
    got = decode_output(_lines(f"n 1 aGk=\nn z2 {out}\nn = 3 2 10000"))
    assert got == (3, b"hi", b"x" * 10000)


@pytest.mark.parametrize("text, message", [
    ("n 1 aGk=\nn = 0 5 0", "incomplete: got 2\\+0 bytes"),
    ("n 1 a\nn = 0 1 0", "damaged"),
    ("n = x 0 0", "damaged"),
])
def test_decode_output_refuses_damage(text, message):
    with pytest.raises(SerialError, match=message):
        decode_output(_lines(text))


class _PtyEnd:
    """The host end of a pty, looking like the socket SerialTransport reads."""

    def __init__(self, fd: int):
        self.fd = fd

    def fileno(self) -> int:
        return self.fd

    def settimeout(self, _t) -> None:
        pass

    def sendall(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]

    def recv(self, n: int) -> bytes:
        try:
            return os.read(self.fd, n)
        except OSError:
            return b""


@pytest.fixture
def agent(tmp_path):
    """rootfs/agent on a pty, with busybox's applets only (as in the guest)."""
    busybox = shutil.which("busybox")
    if not busybox:
        pytest.skip("busybox not installed (scripts/setup.sh installs busybox-static)")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for applet in subprocess.run([busybox, "--list"], capture_output=True, text=True).stdout.split():
        (bindir / applet).symlink_to(busybox)
    master, slave = pty.openpty()
    tty.setraw(master)
    name = os.ttyname(slave).removeprefix("/dev/")
    env = {"PATH": str(bindir), "VMPROBE_AGENT_DIR": str(tmp_path / "agent"),
           "VMPROBE_AGENT_LOG": str(tmp_path / "agent.log"), "VMPROBE_AGENT_SSH": str(tmp_path / "ssh")}
    proc = subprocess.Popen([busybox, "sh", str(ROOTFS_DIR / "agent"), name], env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    transport = SerialTransport(_PtyEnd(master), port=name)
    try:
        transport.hello(10)
        yield transport
    finally:
        os.killpg(proc.pid, signal.SIGKILL)   # the agent and its jobs: its own process group
        proc.wait(5)
        os.close(master)
        os.close(slave)


def test_agent_runs_commands_with_separate_streams_and_status(agent):
    assert agent.ssh_available is False
    r = agent.run("echo out; echo err >&2; exit 7", 10)
    assert (r.status, r.stdout, r.stderr) == (7, "out\n", "err\n")
    big = agent.run("i=0; while [ $i -lt 3000 ]; do echo line $i; i=$((i+1)); done", 30).stdout
    assert big.splitlines()[-1] == "line 2999" and len(big) > 8192   # came gzipped
    assert agent.run("cat", 10).stdout == ""                         # stdin is /dev/null


def test_agent_started_command_reads_stdin(agent):
    channel = agent.start("read -r a; echo got $a; cat")
    channel.sendall(b"go\n")
    channel.sendall(b"rest\n")
    channel.shutdown_write()
    assert agent.wait(channel, "read", 10).stdout == "got go\nrest\n"


def test_agent_timeout_kills_and_the_next_command_is_not_confused(agent):
    with pytest.raises(CommandTimeout, match="'sleep 30' did not finish within 1s"):
        agent.run("sleep 30", 1)
    assert agent.run("echo next", 10).stdout == "next\n"


def test_agent_upload_is_checksummed_and_atomic(agent, tmp_path):
    src = tmp_path / "blob"
    src.write_bytes(os.urandom(60_000) + b"\0" * 40_000)   # several chunks, binary
    dest = tmp_path / "guest" / "blob.ko"
    dest.parent.mkdir()
    agent.put(src, str(dest), 0o600)
    assert dest.read_bytes() == src.read_bytes()
    assert oct(dest.stat().st_mode & 0o777) == "0o600"
    assert [p.name for p in dest.parent.iterdir()] == ["blob.ko"]   # no part files left


def test_agent_resends_a_chunk_that_arrives_damaged(agent, tmp_path, monkeypatch):
    """A chunk whose md5 does not match is refused and sent again."""
    src = tmp_path / "blob"
    src.write_bytes(os.urandom(1000))
    sent = []
    real_send = agent.send

    def flaky(data: bytes) -> None:
        if data.startswith(b"D ") and not sent:
            sent.append(data)
            head, _, body = data.partition(b"\n")
            fields = head.split(b" ")
            fields[4] = hashlib.md5(b"something else").hexdigest().encode()  # the md5 will not match
            data = b" ".join(fields) + b"\n" + body
        real_send(data)

    monkeypatch.setattr(agent, "send", flaky)
    dest = tmp_path / "copy"
    agent.put(src, str(dest))
    assert sent and dest.read_bytes() == src.read_bytes()


def test_hello_takes_a_late_answer_to_an_earlier_hello():
    """A slow agent answers the first hello after the second was sent: that answer counts."""
    import socket as _socket
    import threading as _threading
    host, guest = _socket.socketpair()
    seen = []

    def slow_agent() -> None:
        buf = b""
        while len(seen) < 2:
            buf += guest.recv(4096)
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                seen.append(line.split())
        guest.sendall(b"%s hello ssh=1\n" % seen[0][1])   # the first one, answered late
    worker = _threading.Thread(target=slow_agent)
    worker.start()
    transport = SerialTransport(host, port="ttyS1")
    transport.hello(10)
    worker.join(5)
    assert transport.ssh_available is True and len(seen) >= 2
    assert transport.reader.lines == {}          # every hello's nonce forgotten
    host.close()
    guest.close()


def test_agent_keeps_requests_whole_while_its_commands_end(agent, monkeypatch):
    """A request arriving in pieces while an earlier command ends: BusyBox ash's `read`
    drops the part of a line it had read when SIGCHLD interrupts it, so the agent must
    never read its port from the shell its commands are children of (issue 17: 1 in 3
    CI runs lost a command over ttyS1)."""
    import time as _time
    real_send = agent.send

    def trickle(data: bytes) -> None:   # the UART hands a line over a few bytes at a time
        for off in range(0, len(data), 3):
            real_send(data[off:off + 3])
            _time.sleep(0.0005)

    monkeypatch.setattr(agent, "send", trickle)
    channel = agent.start("while read -r line; do echo \"$line\"; done")
    for i in range(60):
        assert agent.run(f"echo {i}; (true) & wait", 10).stdout == f"{i}\n"
        channel.sendall(f"fed {i}\n".encode())
    channel.shutdown_write()
    assert agent.wait(channel, "echo loop", 10).stdout.splitlines() == [f"fed {i}" for i in range(60)]

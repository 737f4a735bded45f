"""A terminal for tests that drive vmprobe interactively: a pty whose slave side is the
child's controlling terminal (as in a user's shell, so ^C is SIGINT to its foreground group)."""
from __future__ import annotations

import contextlib
import fcntl
import os
import re
import select
import subprocess
import termios
import time


class Terminal:
    def __init__(self, proc: subprocess.Popen, master: int):
        self.proc, self.master = proc, master
        self.seen = bytearray()

    def send(self, data: bytes) -> None:
        os.write(self.master, data)

    def expect(self, pattern: str, timeout: float) -> re.Match:
        """Wait for ``pattern`` in everything the terminal has shown so far."""
        deadline = time.monotonic() + timeout
        while True:
            m = re.search(pattern, self.text)
            if m:
                return m
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out after {timeout}s waiting for {pattern!r} in:\n{self.text}")
            ready, _, _ = select.select([self.master], [], [], min(left, 0.5))
            if ready:
                try:
                    data = os.read(self.master, 65536)
                except OSError:
                    data = b""
                if not data:
                    raise AssertionError(f"the terminal closed waiting for {pattern!r} in:\n{self.text}")
                self.seen += data

    @property
    def text(self) -> str:
        return self.seen.decode(errors="replace")


def _controlling_terminal() -> None:
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


@contextlib.contextmanager
def terminal(argv: list[str]):
    """Run ``argv`` on a new pty; on the way out, SIGTERM (vmprobe stops its VM), then SIGKILL."""
    master, slave = os.openpty()
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, preexec_fn=_controlling_terminal)
    os.close(slave)
    try:
        yield Terminal(proc, master)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        os.close(master)

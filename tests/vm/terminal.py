"""A terminal for tests that drive vmprobe interactively (a pty's master side)."""
from __future__ import annotations

import os
import re
import select
import time


def read_until(fd: int, pattern: str, timeout: float, seen: bytearray) -> re.Match:
    deadline = time.monotonic() + timeout
    while True:
        m = re.search(pattern, seen.decode(errors="replace"))
        if m:
            return m
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out after {timeout}s waiting for {pattern!r} in:\n{seen.decode()}")
        ready, _, _ = select.select([fd], [], [], min(left, 0.5))
        if ready:
            try:
                data = os.read(fd, 65536)
            except OSError:
                data = b""
            if not data:
                raise AssertionError(f"the terminal closed waiting for {pattern!r} in:\n{seen.decode()}")
            seen += data

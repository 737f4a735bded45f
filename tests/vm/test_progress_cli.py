"""Progress and ``--verbose`` as a user sees them: the real CLI, a real boot, a real pty."""
from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time

from vmprobe.kernels import get_kernel

TIMEOUT = 300


def test_verbose_streams_the_console_to_stderr(vmprobe_cli, accel, monkeypatch):
    monkeypatch.setenv("VMPROBE_COLD", "1")   # a boot, not a warm restore: the whole console
    release = get_kernel("debian:bookworm").release
    result = vmprobe_cli("exec", "--accel", accel, "--verbose", "--", "uname", "-r", timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout == f"{release}\n"                      # stdout stays the command's
    err = result.stderr
    assert f"Linux version {release} " in err                   # the boot, from the first line …
    assert re.search(r"\] VMPROBE-READY [0-9a-f]{16} ssh=1$", err, re.M)  # … to the READY marker
    assert "\x1b[" not in err                                   # no progress drawn over it


def _run_in_pty(*args: str, env: dict, timeout: float = TIMEOUT) -> tuple[int, str]:
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "vmprobe", *args], stdin=slave, stdout=slave,
                            stderr=slave, env=env, close_fds=True, start_new_session=True)
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:      # the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        else:
            raise AssertionError(f"vmprobe {' '.join(args)} did not finish in {timeout}s")
        return proc.wait(30), b"".join(chunks).decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


def test_a_terminal_sees_the_boot_progress(accel):
    release = get_kernel("debian:bookworm").release
    env = {k: v for k, v in os.environ.items()
           if k not in ("CI", "PYTEST_CURRENT_TEST", "VMPROBE_PROGRESS")}
    code, out = _run_in_pty("exec", "--accel", accel, "--", "uname", "-r", env=env)
    assert code == 0, out[-2000:]
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out)
    assert f"starting {release}" in plain                       # the spinner's line …
    assert re.search(r"starting \S+ 0:00:0\d", plain)           # … with its elapsed time
    assert plain.rstrip().endswith(release)                     # erased before the output
    # the console is not streamed without --verbose (the spinner's detail may quote one line)
    segments = re.split(r"[\r\n]+", plain)
    assert not any(seg.startswith("[    0.000000] Linux version") for seg in segments), segments[:20]

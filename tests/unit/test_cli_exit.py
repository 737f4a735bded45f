"""The ``vmprobe`` command's quick exit (cli.run): statuses, messages and exit handlers survive it."""
from __future__ import annotations

import subprocess
import sys


def _vmprobe(*args: str, code: str = "") -> subprocess.CompletedProcess:
    prog = code or "from vmprobe.cli import run; run()"
    return subprocess.run([sys.executable, "-c", prog, *args], capture_output=True, text=True, timeout=60)


def test_statuses_and_messages_come_through():
    bad = _vmprobe("--no-such-option")
    assert bad.returncode == 2 and "vmprobe: error: " in bad.stderr
    empty = _vmprobe("exec")
    assert empty.returncode == 1 and "give a command after --" in empty.stderr
    helped = _vmprobe("--help")
    assert helped.returncode == 0 and "usage: " in helped.stdout
    missing = _vmprobe("exec", "--on", "no-such-vm", "--", "true")
    assert missing.returncode == 65 and "no live VM named 'no-such-vm'" in missing.stderr


def test_exit_handlers_run_before_the_quick_exit(tmp_path):
    flag = tmp_path / "ran"
    code = ("import atexit, sys; from pathlib import Path; "
            f"atexit.register(lambda: Path({str(flag)!r}).write_text('yes')); "
            "from vmprobe.cli import run; sys.argv[1:] = ['--help']; run()")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and flag.read_text() == "yes"

"""``vmprobe gdb --on``: gdb on a live VM's gdbstub, and the VM left as it was found."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_live import _cli, live  # noqa: F401  (the fixture: live VMs stopped and checked gone)


def _row(name: str) -> dict:
    return next(r for r in json.loads(_cli("ls", "--json").stdout) if r["name"] == name)


def _as_found(info: dict) -> None:
    """The same QEMU (not replaced), running, no module or kprobe left."""
    res = _cli("exec", "--on", info["name"], "--timeout", "60", "--",
               "cut -d' ' -f1 /proc/modules; echo @; cat /sys/kernel/debug/kprobes/list")
    assert res.returncode == 0, res.stderr
    mods, kprobes = res.stdout.split("@\n")
    assert "vmprobe_fork" not in mods.split() and not kprobes.strip(), res.stdout
    row = _row(info["name"])
    assert row["replaced"] == 0 and row["qemu_pid"] == info["qemu_pid"], row


def test_gdb_on_a_live_vm_batch(live):
    info = live()
    text = _cli("exec", "--on", info["name"], "--", "grep -E ' [tT] kernel_clone$' /proc/kallsyms").stdout
    clone = int(text.split()[0], 16)
    res = _cli("gdb", "--on", info["name"], "--module", "--batch", "-ex", "info symbol kernel_clone",
               "-ex", "info address handler_post", "-ex", f"info symbol {clone:#x}", "-ex", "p/x $pc")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "kernel_clone in section .kallsyms" in res.stdout, res.stdout
    m = re.search(r"vmprobe_fork symbols at \.text (0x[0-9a-f]+)", res.stderr)
    post = re.search(r'Symbol "handler_post" is a function at address (0x[0-9a-f]+)', res.stdout)
    assert m and post and int(post[1], 16) >= int(m[1], 16), res.stdout + res.stderr
    assert re.search(r"^\$1 = 0x[0-9a-f]+$", res.stdout, re.M), res.stdout   # it was stopped, in the guest
    assert "[Inferior 1 (process 1) detached]" in res.stdout
    _as_found(info)


@pytest.mark.slow
def test_gdb_on_client_killed_mid_session(live, tmp_path):
    """A gdb client killed while the guest is stopped under it: the guest runs on, as found."""
    info = live()
    err = tmp_path / "gdb.err"
    with err.open("w") as f:
        client = subprocess.Popen([sys.executable, "-m", "vmprobe", "gdb", "--on", info["name"]],
                                  stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=f)
    try:
        deadline = time.monotonic() + 180
        while "stopped:" not in err.read_text():
            assert client.poll() is None and time.monotonic() < deadline, err.read_text()
            time.sleep(0.2)
        time.sleep(1)   # gdb is attached by now (it stops the guest)
        os.kill(client.pid, signal.SIGKILL)
        client.wait(10)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait(10)
        client.stdin.close()
    _as_found(info)
    assert not [p for p in os.listdir("/proc") if p.isdigit() and _is_session_gdb(p, info["workdir"])]


def _is_session_gdb(pid: str, workdir: str) -> bool:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False
    return cmd.startswith("gdb") and workdir in cmd

"""Live VMs for real: ``vmprobe up``, ``exec/probe --on``, ``down``, the idle timeout, a crash,
two at once, a killed supervisor; ``--put``/``--module`` on exec and shell; ``--dry-run``."""
from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vmprobe.pytest_plugin.procscan import qemu_processes as _qemu_processes
from vmprobe.runs import live_client

FORK = Path(__file__).resolve().parents[2] / "vmprobe" / "modules" / "templates" / "vmprobe_fork.c"


def _name() -> str:
    return f"t{secrets.token_hex(3)}"


def _cli(*args, timeout=300, input=None, **kw):
    return subprocess.run([sys.executable, "-m", "vmprobe", *args], capture_output=True, text=True,
                          timeout=timeout, input=input, stdin=None if input is not None else subprocess.DEVNULL,
                          **kw)


def _gone(info: dict, timeout: float = 15) -> None:
    """The supervisor, its QEMU, its dirs and sockets are all gone (waits for them, bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [p for p in (info["pid"], info["qemu_pid"]) if Path(f"/proc/{p}").exists()
                 and "Z" not in Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0]]
        left = [p for p in (info["workdir"], str(live_client.vm_dir(info["name"]))) if Path(p).exists()]
        sockets = [l for l in Path("/proc/net/unix").read_text().splitlines()
                   if info["workdir"] in l or str(live_client.vm_dir(info["name"])) in l]
        if not alive and not left and not sockets:
            assert not [c for _, c in _qemu_processes() if info["workdir"] in c]
            return
        time.sleep(0.1)
    raise AssertionError(f"left behind after {timeout}s: processes {alive}, paths {left}, sockets {sockets}")


@pytest.fixture
def live(accel):
    """Start live VMs by name; whatever a test leaves up is stopped (and checked gone)."""
    started: list[dict] = []

    def up(*extra: str, name: str | None = None) -> dict:
        name = name or _name()
        res = _cli("up", "--name", name, "--accel", accel, *extra)
        assert res.returncode == 0, res.stderr
        info = live_client.require(name)
        started.append(info)
        return info
    yield up
    for info in started:
        if live_client.read_info(info["name"]):
            _cli("down", info["name"], timeout=60)
        _gone(info)


def test_up_exec_probe_down(live, tmp_path):
    info = live()
    name = info["name"]
    assert info["accel"] and info["release"] and info["command_line"][0].startswith("qemu-system")
    ls = json.loads(_cli("ls", "--json").stdout)
    assert [r for r in ls if r["name"] == name and r["state"] == "up"]
    assert _cli("ls").stdout.splitlines()[0].split()[:3] == ["NAME", "KERNEL", "ACCEL"]
    res = _cli("exec", "--on", name, "--", "sh", "-c", "uname -r; exit 7")
    assert res.returncode == 7 and res.stdout.strip() == info["release"], res.stderr
    # files in: --put (default path and an explicit one)
    f = tmp_path / "hello.txt"
    f.write_text("hello live\n")
    res = _cli("exec", "--on", name, "--put", str(f), "--put", f"{f}:/root/", "--",
               "cat /tmp/hello.txt /root/hello.txt")
    assert res.returncode == 0 and res.stdout == "hello live\n" * 2, res.stderr
    # a whole probe on it, twice: it leaves the VM as it found it (nothing replaced)
    for _ in range(2):
        res = _cli("probe", "--on", name, "--json", str(tmp_path / "r.json"))
        assert res.returncode == 0, res.stdout + res.stderr
        assert "PASS" in res.stdout and "replaced" not in res.stderr
    assert json.loads((tmp_path / "r.json").read_text())["verdict"] == "pass"
    state = _cli("exec", "--on", name, "--", "cut -d' ' -f1 /proc/modules; cat /sys/kernel/debug/kprobes/list")
    assert "vmprobe_fork" not in state.stdout
    assert next(r for r in json.loads(_cli("ls", "--json").stdout) if r["name"] == name)["replaced"] == 0
    # a module left loaded: the VM is replaced after the request
    res = _cli("exec", "--on", name, "--module", str(FORK), "--", "true")
    assert res.returncode == 0 and "load it with:  vmprobe-insmod /tmp/vmprobe_fork.ko" in res.stderr, res.stderr
    res = _cli("down", name)
    assert res.returncode == 0, res.stderr
    _gone(info)
    assert _cli("exec", "--on", name, "--", "true").returncode == 65


def test_up_over_serial_keeps_its_transport(live, tmp_path):
    """`up --transport serial`: the live VM's commands, probe and piped shell go over the agent."""
    info = live("--transport", "serial")
    name = info["name"]
    assert info["transport"] == "serial"
    res = _cli("exec", "--on", name, "--", "uname -r; echo err >&2; exit 3")
    assert (res.returncode, res.stdout.strip()) == (3, info["release"]) and "err" in res.stderr, res.stderr
    res = _cli("shell", "--on", name, input="echo piped $((6*7))\n")
    assert res.returncode == 0 and res.stdout == "piped 42\n", res.stderr
    res = _cli("probe", "--on", name, "--json", str(tmp_path / "r.json"))
    assert res.returncode == 0 and json.loads((tmp_path / "r.json").read_text())["verdict"] == "pass", \
        res.stdout + res.stderr


def test_idle_timeout(live):
    info = live("--idle-timeout", "6")
    assert _cli("exec", "--on", info["name"], "--", "true").returncode == 0
    _gone(info, timeout=30)


def test_crash_on_a_live_vm_replaces_it(live):
    info = live()
    name = info["name"]
    res = _cli("exec", "--on", name, "--timeout", "60", "--",
               "echo 1 > /proc/sys/kernel/sysrq; echo c > /proc/sysrq-trigger")
    assert res.returncode == 69 and "sysrq triggered crash" in res.stderr, res.stderr
    res = _cli("exec", "--on", name, "--", "uname -r")
    assert res.returncode == 0 and res.stdout.strip() == info["release"], res.stderr
    row = next(r for r in json.loads(_cli("ls", "--json").stdout) if r["name"] == name)
    assert row["replaced"] == 1 and row["qemu_pid"] != info["qemu_pid"]
    assert not Path(info["workdir"]).exists()   # the crashed VM's dir went with it


def test_two_live_vms_at_once(live):
    a, b = live(), live()
    procs = [subprocess.Popen([sys.executable, "-m", "vmprobe", "exec", "--on", x["name"], "--",
                               "cat /proc/sys/kernel/random/boot_id"], stdout=subprocess.PIPE, text=True)
             for x in (a, b)]
    outs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs) and all(outs)
    assert a["qemu_pid"] != b["qemu_pid"] and a["workdir"] != b["workdir"]
    assert {r["name"] for r in json.loads(_cli("ls", "--json").stdout)} >= {a["name"], b["name"]}


def test_killed_supervisor_leaves_nothing(live):
    info = live()
    os.kill(info["pid"], signal.SIGKILL)
    _gone(info)
    assert live_client.read_info(info["name"]) is None


def test_shell_module_and_put_without_live_vm(accel, tmp_path):
    """--module on shell (a script on stdin) prints the insmod line; the line works."""
    script = "vmprobe-insmod /tmp/vmprobe_fork.ko nonce=t && grep -c vmprobe_fork /proc/modules; rmmod vmprobe_fork\n"
    res = subprocess.run([sys.executable, "-m", "vmprobe", "shell", "--accel", accel, "--module", str(FORK)],
                         input=script, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "load it with:  vmprobe-insmod /tmp/vmprobe_fork.ko" in res.stderr
    assert res.stdout.splitlines() == ["vmprobe-insmod: finit_module=0", "1"]   # the load's errno, then grep
    f = tmp_path / "x.sh"
    f.write_text("echo put-ok\n")
    f.chmod(0o755)
    res = _cli("exec", "--accel", accel, "--put", f"{f}:/tmp/y.sh", "--", "/tmp/y.sh")
    assert res.returncode == 0 and res.stdout.strip() == "put-ok", res.stderr


@pytest.mark.parametrize("command", [("exec", "--", "true"), ("shell",), ("probe",), ("up",)])
def test_dry_run_prints_the_command_lines_and_starts_nothing(accel, command):
    res = _cli(command[0], "--accel", accel, "--dry-run", *command[1:], timeout=120)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    qemu = lines[lines.index("qemu command line:") + 1].strip()
    kernel = lines[lines.index("kernel command line:") + 1].strip()
    used = {"auto": ("kvm", "tcg")}.get(accel, (accel,))   # auto: the host's cached verdict
    assert qemu.startswith("qemu-system-") and "-kernel " in qemu
    assert any(f"-accel {a} " in qemu for a in used), qemu
    assert "console=" in kernel and "vmprobe.nonce=" in kernel
    assert not [c for _, c in _qemu_processes() if "vmprobe-XXXXXXXX" in c]

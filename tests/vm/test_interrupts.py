"""Ctrl-C at each phase of ``vmprobe probe``, QEMU killed mid-run, the guest's SSH server killed.

Each case runs the real CLI in its own session (as a terminal would: its own
process group) with a private runtime dir. ``VMPROBE_TEST_HOLD_AT=<phase>``
makes the run stop at a known point inside that phase and say so on stderr
(vmprobe/interrupts.py); the test then sends SIGINT. vmprobe must exit 130
within seconds, and leave no QEMU, no process of its group, no socket, no
machine dir and no half-written cache entry behind.
"""
from __future__ import annotations

import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from cachecopy import copy_apt_state, copy_cache

from vmprobe import modules
from vmprobe.errors import EXIT_CODES, EXIT_INTERRUPTED
from vmprobe.host.processes import runtime_dir
from vmprobe.pytest_plugin.procscan import leftovers

pytestmark = pytest.mark.usefixtures("leaves_nothing_behind")
REACH_TIMEOUT = 300   # to get to the phase (a cold module build, a TCG boot on a busy host)
EXIT_WITHIN = 20      # from the signal to vmprobe's exit


class Run:
    """``vmprobe …`` in its own session with a private runtime dir, its stderr read line by line."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None):
        self.runtime = Path(tempfile.mkdtemp(prefix="ctl-", dir=runtime_dir()))
        self.env = dict(os.environ, VMPROBE_RUNTIME_DIR=str(self.runtime), **(env or {}))
        self.proc = subprocess.Popen([sys.executable, "-m", "vmprobe", *args], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=self.env, start_new_session=True)
        os.set_blocking(self.proc.stderr.fileno(), False)
        os.set_blocking(self.proc.stdout.fileno(), False)
        self.err = self.out = ""

    def _pump(self) -> None:
        for name, stream in (("out", self.proc.stdout), ("err", self.proc.stderr)):
            try:
                chunk = os.read(stream.fileno(), 1 << 16)
            except BlockingIOError:
                continue
            if chunk:
                setattr(self, name, getattr(self, name) + chunk.decode(errors="replace"))

    def wait_for(self, pattern: str, stream: str = "err", timeout: float = REACH_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not re.search(pattern, getattr(self, stream), re.M):
            self._pump()
            if self.proc.poll() is not None:
                self._pump()
                if re.search(pattern, getattr(self, stream), re.M):
                    return
                pytest.fail(f"vmprobe exited {self.proc.returncode} before {pattern!r}:\n{self.err[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {pattern!r} within {timeout}s:\n{self.err[-3000:]}")
            time.sleep(0.05)

    def wait(self, timeout: float = EXIT_WITHIN) -> tuple[int, float]:
        t0 = time.monotonic()
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"vmprobe did not exit within {timeout}s:\n{self.err[-3000:]}")
        self._pump()
        return code, time.monotonic() - t0

    def group_members(self) -> list[str]:
        """Processes still in the run's process group (its session leader's pid)."""
        left = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == self.proc.pid:  # pgrp
                left.append(stat.parent.name)
        return left

    def kill(self) -> None:
        for sig in (signal.SIGKILL,):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
        self.proc.wait(10)

    def assert_clean(self) -> None:
        assert not self.group_members(), f"processes left in the run's group: {self.group_members()}"
        assert not leftovers(self.runtime), leftovers(self.runtime)
        unix = [line.split()[-1] for line in Path("/proc/net/unix").read_text().splitlines()[1:]
                if str(self.runtime) in line]
        assert not unix, f"unix sockets left: {unix}"
        assert list(self.runtime.iterdir()) == [], list(self.runtime.iterdir())

    def close(self) -> None:
        if self.proc.poll() is None:
            self.kill()
        for stream in (self.proc.stdout, self.proc.stderr):
            stream.close()
        shutil.rmtree(self.runtime, ignore_errors=True)


@pytest.fixture
def run_cli():
    runs: list[Run] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Run:
        runs.append(Run(list(args), env))
        return runs[-1]
    yield start
    for r in runs:
        r.close()


def _staging_dirs(directory: Path) -> set[str]:
    return {p.name for p in directory.glob(".*.tmp-*")}


def _fresh_module(tmp_path: Path) -> Path:
    """The fork probe with a unique comment: a cache miss, so the build really runs."""
    src = tmp_path / "vmprobe_fork.c"
    src.write_text(modules.FORK_PROBE.read_text() + f"\n/* {secrets.token_hex(8)} */\n")
    return src


# The probe check's phases are named after what they do: insmod (before it), settle (the module
# is in, gdb attached, the guest running), armed-bytes (reading the site through the gdbstub).
PHASES = ["fetch", "build", "rootfs", "boot", "ssh", "insmod", "settle", "armed-bytes", "shutdown"]


# to="group": as a terminal's Ctrl-C, to vmprobe's whole process group (helpers such as make
# get it too; gdb has a group of its own and must not, or it would stop the guest)
@pytest.mark.parametrize("phase, sig, to", [(p, signal.SIGINT, "process") for p in PHASES]
                         + [("armed-bytes", signal.SIGINT, "group"), ("boot", signal.SIGTERM, "process"),
                            ("shutdown", signal.SIGTERM, "process")])
def test_signal_at_each_phase_ends_the_run_fast_and_leaves_nothing(phase, sig, to, kernel, accel, tmp_path,
                                                                   run_cli, no_leaks, record_property):
    args = ["probe", "--kernel", kernel.spec, "--accel", accel, "--no-sysrq"]
    env = {"VMPROBE_TEST_HOLD_AT": phase}
    # a private cache: empty of kernels (only the package lists copied) to hold in the fetch,
    # else holding the kernel (hard links); its staging dirs are this run's alone
    cache = tmp_path / "cache"
    if phase == "fetch":
        copy_apt_state(kernel, cache)
    else:
        copy_cache(kernel, cache)
    env["VMPROBE_CACHE"] = str(cache)
    cache_watch = cache / ("kernels" if phase == "fetch" else "modules")
    cache_watch.mkdir(parents=True, exist_ok=True)
    if phase == "build":
        args += ["--module", str(_fresh_module(tmp_path))]
    run = run_cli(*args, env=env)
    run.wait_for(rf"^vmprobe: test hold at {re.escape(phase)} ")
    if phase == "fetch":
        assert _staging_dirs(cache_watch), "the hold is not inside the kernel's staging dir"
    if phase not in ("fetch", "build"):
        assert leftovers(run.runtime), "no machine yet at the hold"
    if to == "group":
        os.killpg(run.proc.pid, sig)
    else:
        run.proc.send_signal(sig)
    code, elapsed = run.wait()
    record_property("seconds_to_exit", round(elapsed, 2))
    print(f"\n{sig.name} to the {to} at {phase}: exit {code} after {elapsed:.2f}s: {run.err.strip().splitlines()[-1]!r}")
    if sig == signal.SIGINT:
        assert code == EXIT_INTERRUPTED, run.err[-3000:]
        assert run.err.rstrip().endswith("vmprobe: interrupted"), run.err[-2000:]
    else:
        assert code == 128 + sig, run.err[-3000:]
    assert "Traceback" not in run.err
    run.assert_clean()
    assert not _staging_dirs(cache_watch), "a half-written cache entry was left"


def _qemu_pid(run: Run) -> int:
    found = [x for x in leftovers(run.runtime) if x.split()[0].isdigit()]
    assert len(found) == 1, found
    return int(found[0].split()[0])


def _exec_until_it_fails(run_cli, kernel, accel, script: str, record_property, name: str, *,
                         kill_qemu: bool = False) -> tuple[int, str, str]:
    """``vmprobe exec -- sh -c SCRIPT`` (SCRIPT first prints "started"), optionally SIGKILL its QEMU
    then; returns (exit code, first stderr line, the command as vmprobe names it)."""
    run = run_cli("exec", "--kernel", kernel.spec, "--accel", accel, "--", "sh", "-c", script)
    run.wait_for(r"^started$", stream="out")
    if kill_qemu:
        os.kill(_qemu_pid(run), signal.SIGKILL)
    code, elapsed = run.wait()
    record_property("seconds_to_fail", round(elapsed, 2))
    message = run.err.strip().splitlines()[0]
    print(f"\n{name}: exit {code} after {elapsed:.2f}s: {message!r}")
    run.assert_clean()
    return code, message, repr(shlex.join(["sh", "-c", script]))


def test_qemu_killed_mid_run_is_a_qemu_error(kernel, accel, run_cli, no_leaks, record_property):
    code, message, command = _exec_until_it_fails(run_cli, kernel, accel, "echo started; sleep 60",
                                                  record_property, "QEMU killed", kill_qemu=True)
    assert code == EXIT_CODES["QemuError"], message
    assert message == f"vmprobe: QEMU died: QEMU was killed by signal 9 while waiting for {command} to finish"


def test_ssh_server_killed_in_the_guest_is_an_ssh_error(kernel, accel, run_cli, no_leaks, record_property):
    code, message, command = _exec_until_it_fails(
        run_cli, kernel, accel, "echo started; sleep 1; kill -9 $(pidof dropbear); sleep 60",
        record_property, "SSH server killed")
    assert code == EXIT_CODES["SshError"], message
    assert message == f"vmprobe: SSH failed: the SSH connection to the guest dropped while running {command}"

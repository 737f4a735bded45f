"""The VM core, for real: boot the default Debian kernel under QEMU, talk SSH to it."""
from __future__ import annotations

import hashlib
import os
import signal
import time

import paramiko
import pytest

from vmprobe.errors import BootTimeout, CommandTimeout, GuestCrash, QemuError, SpecError, SshError
from vmprobe.kernels import parse_spec
from vmprobe.vm.machine import Machine
from vmprobe.vm.ssh import GuestSsh, RunKeys


def test_guest_runs_commands_over_ssh(vm, kernel):
    res = vm.run("uname -r; echo err >&2; exit 3")
    assert res.status == 3
    assert res.stdout.strip() == kernel.release
    assert res.stderr.strip() == "err"


def test_guest_has_the_virtio_modules_and_debugfs(vm):
    out = vm.run("cat /proc/modules; ls /sys/kernel/debug/kprobes").stdout
    for mod in ("virtio_net", "virtio_pci", "virtio_rng"):
        assert mod in out
    assert "list" in out and "blacklist" in out


def test_sftp_put_copies_bytes_exactly(vm, tmp_path):
    data = os.urandom(300_000)
    src = tmp_path / "blob"
    src.write_bytes(data)
    vm.ssh.put(src, "/tmp/blob")
    out = vm.run("sha256sum /tmp/blob; rm /tmp/blob").stdout
    assert out.split()[0] == hashlib.sha256(data).hexdigest()


def test_command_timeout_is_bounded_and_named(vm):
    t0 = time.monotonic()
    with pytest.raises(CommandTimeout, match="sleep 30"):
        vm.run("sleep 30", timeout=2)
    assert time.monotonic() - t0 < 10
    assert vm.run("echo still-usable").stdout.strip() == "still-usable"


def test_host_key_is_pinned(vm, tmp_path):
    """A client expecting another host key must refuse the guest."""
    other = RunKeys.generate(tmp_path)
    impostor = RunKeys(vm.ssh.keys.client, other.host_key_file, other.host_public)
    with pytest.raises(SshError):
        GuestSsh(vm.ssh_port, impostor).connect(timeout=3)


def test_console_has_the_boot_nonce_and_kernel_banner(vm, kernel):
    text = vm.console.text
    assert f"VMPROBE-READY {vm.nonce}" in text
    assert vm.qmp.cmd("query-status")["status"] == "running"


def test_loopback_only(vm):
    """SSH is forwarded from 127.0.0.1 only; QMP and gdbstub are unix sockets in a 0700 dir."""
    assert any(f"hostfwd=tcp:127.0.0.1:{vm.ssh_port}-" in a for a in vm.command_line)
    assert oct(vm.workdir.stat().st_mode & 0o777) == "0o700"
    assert vm.gdb_socket.is_socket()


def test_exec_cli_prints_release_and_passes_exit_status(kernel, no_leaks, vmprobe_cli, accel):
    res = vmprobe_cli("exec", "--kernel", "debian:bookworm", "--accel", accel, "--",
                      "sh", "-c", "uname -r; exit 7")
    assert res.returncode == 7, res.stderr
    assert res.stdout.strip() == kernel.release
    assert kernel.release.endswith("-cloud-amd64")


def test_unknown_suite_and_flavour_are_specific_errors(vmprobe_cli):
    with pytest.raises(SpecError, match="unknown Debian suite 'potato'.*known suites: .*bookworm"):
        parse_spec("debian:potato")
    with pytest.raises(SpecError, match="unknown flavour 'sparc64' for debian:bookworm"):
        parse_spec("debian:bookworm/sparc64")
    res = vmprobe_cli("exec", "--kernel", "debian:potato", "--", "true")
    assert res.returncode == 64
    assert "unknown Debian suite 'potato'" in res.stderr


def test_boot_that_never_reaches_ready_times_out_with_the_console(kernel, no_leaks, accel):
    """An init that never announces READY (rdinit=/bin/cat waits on the console forever)."""
    t0 = time.monotonic()
    with pytest.raises(BootTimeout) as info:
        with Machine(kernel, accel=accel, boot_timeout=15, append=("rdinit=/bin/cat",)):
            pass
    assert time.monotonic() - t0 < 40
    assert "READY marker" in info.value.message
    assert "Run /bin/cat as init process" in info.value.detail  # the console tail comes with it


def test_init_that_dies_is_reported_as_a_kernel_crash(kernel, no_leaks, accel):
    """rdinit=/bin/false: init exits, the kernel panics ("Attempted to kill init")."""
    t0 = time.monotonic()
    with pytest.raises(GuestCrash, match="kernel panic"):
        with Machine(kernel, accel=accel, boot_timeout=60, append=("rdinit=/bin/false",)):
            pass
    assert time.monotonic() - t0 < 60


def test_qemu_that_refuses_to_start_is_a_qemu_error(kernel, no_leaks, accel):
    with pytest.raises(QemuError, match="exited with status"):
        with Machine(kernel, accel=accel, qemu_args=("-device", "no-such-device")):
            pass


def test_qemu_killed_mid_command(kernel, no_leaks, accel):
    with Machine(kernel, accel=accel) as m:
        channel = m.ssh.start("sleep 60")
        os.kill(m.proc.pid, signal.SIGKILL)
        t0 = time.monotonic()
        with pytest.raises((QemuError, SshError)):
            m.ssh.wait(channel, "sleep 60", timeout=30)
            m.check_alive()
        with pytest.raises(QemuError, match="killed by signal 9"):
            m.check_alive(grace=5)  # the SSH drop can be seen a moment before QEMU is reaped
        assert time.monotonic() - t0 < 30


def test_ssh_server_killed_in_guest(kernel, no_leaks, accel):
    with Machine(kernel, accel=accel) as m:
        with pytest.raises((SshError, paramiko.SSHException)):
            m.run("kill -9 $(cat /run/dropbear.pid); kill -9 $PPID; sleep 5", timeout=20)
            m.run("true", timeout=5)


def test_shell_runs_a_script_from_stdin(kernel, no_leaks, accel):
    import subprocess
    import sys
    res = subprocess.run([sys.executable, "-m", "vmprobe", "shell", "--accel", accel],
                         input="uname -r\necho $((6*7))\nexit 3\n", capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 3, res.stderr
    assert res.stdout.split() == [kernel.release, "42"]

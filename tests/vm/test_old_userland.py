"""The old-era guest userland and the exported guest, on real kernels.

No 2.6 kernel can be had here, so the old userland (Debian's busybox built with musl,
for kernels before 3.2 that glibc refuses) is forced on a modern Debian kernel
(``--userland old``): it boots, runs no SSH server, and the probe check passes over
the serial agent. The exported guest (``vmprobe rootfs export``) holds no secret;
booted as the initrd, it gets the run's keys over the control port.
"""
from __future__ import annotations

import gzip
import re
import stat

import pytest

from vmprobe.check.probe import ProbeOptions, run_probe_check
from vmprobe.formats.cpio import read_newc
from vmprobe.formats.elf import glibc_problem
from vmprobe.guest.rootfs import build_base
from vmprobe.vm.machine import Machine

GUEST_FILES = ("init", "etc/inittab", "bin/busybox", "bin/vmprobe-agent", "bin/sh", "etc/vmprobe/modules",
               "dev/console", "dev/kmsg", "dev/ttyS0", "dev/ttyS1")


def _export(vmprobe_cli, kernel, path, userland: str) -> dict[str, tuple[int, bytes]]:
    res = vmprobe_cli("rootfs", "export", "--kernel", kernel.spec, "--userland", userland, "-o", str(path),
                      timeout=2400)   # the old userland is built once (minutes), then cached
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"the {userland} guest for {kernel.release}" in res.stdout and "CONFIG_INITRAMFS_SOURCE" in res.stdout
    raw = path.read_bytes()
    return read_newc(gzip.decompress(raw) if path.name.endswith(".gz") else raw)


def _no_secrets(entries: dict[str, tuple[int, bytes]]) -> None:
    assert not [p for p in entries if p.startswith(("root/.ssh/", "etc/dropbear/"))]   # no keys
    assert stat.S_ISDIR(entries["root/.ssh"][0])
    for path, (mode, body) in entries.items():
        if stat.S_ISREG(mode):
            assert b"PRIVATE KEY" not in body and b"vmprobe-run" not in body, path   # RunKeys' comment


def test_export_is_the_booted_guest_without_secrets(kernel, vmprobe_cli, tmp_path):
    entries = _export(vmprobe_cli, kernel, tmp_path / "guest.cpio", "modern")
    # byte for byte the base image vmprobe boots (before the run layer with the keys)
    assert (tmp_path / "guest.cpio").read_bytes() == build_base(kernel, "modern").path.read_bytes()
    for path in (*GUEST_FILES, "bin/dropbear"):
        assert path in entries, path
    for name in entries["etc/vmprobe/modules"][1].decode().split():
        assert f"lib/modules/vmprobe/{name}" in entries
    _no_secrets(entries)
    gz = _export(vmprobe_cli, kernel, tmp_path / "guest.cpio.gz", "modern")
    assert gz == entries


@pytest.mark.slow
def test_exported_guest_boots_with_secrets_over_the_control_port(kernel, accel, vmprobe_cli, tmp_path, no_leaks):
    image = tmp_path / "guest.cpio"
    _export(vmprobe_cli, kernel, image, "modern")
    with Machine(kernel, accel=accel, guest_image=image, transport="ssh", boot_timeout=300) as m:
        assert ["-initrd", str(image)] == m.command_line[m.command_line.index("-initrd"):][:2]
        assert "vmprobe.warm=ttyS1" in m.command_line[m.command_line.index("-append") + 1]
        assert re.search(r"VMPROBE-SNAPSHOT-POINT$", m.console.text, re.M)
        assert re.search(rf"VMPROBE-READY {m.nonce} ssh=1$", m.console.text, re.M)
        # SSH let this run's key in: the key came over the control port, not in the image
        assert m.ssh.name == "ssh"
        assert m.run("cat /root/.ssh/authorized_keys").stdout.strip() == m.ssh.keys.authorized_key
        assert m.timings["boot"] > 0


@pytest.mark.slow
def test_old_userland_is_static_musl_and_passes_the_probe_check(kernel, accel, vmprobe_cli, fork_module, tmp_path,
                                                               no_leaks):
    old = _export(vmprobe_cli, kernel, tmp_path / "old.cpio", "old")
    modern = read_newc(build_base(kernel, "modern").path.read_bytes())
    for path in GUEST_FILES:
        assert path in old, path
    assert "bin/dropbear" not in old and "usr/lib/sftp-server" not in old
    _no_secrets(old)
    busybox = old["bin/busybox"][1]
    assert glibc_problem(busybox) is None                        # no loader, no libraries, no glibc
    assert glibc_problem(modern["bin/busybox"][1]) is not None   # Debian's busybox-static: glibc inside
    # the same applets as the modern guest: /init and the serial agent run unchanged
    applets = lambda entries: {p for p, (mode, body) in entries.items()  # noqa: E731
                               if p.startswith("bin/") and stat.S_ISLNK(mode) and body == b"busybox"}
    assert applets(old) == applets(modern)

    with Machine(kernel, accel=accel, warm=True, userland="old", boot_timeout=300) as m:   # transport auto
        assert m.ssh.name == "serial" and m.ssh.ssh_available is False
        assert "vmprobe-init: no SSH server in this guest" in m.console.text
        r = m.run("uname -r; busybox | head -1; ls /bin/dropbear", 30)
        assert r.stdout.splitlines()[0] == kernel.release and r.stdout.splitlines()[1].startswith("BusyBox v")
        assert r.status != 0 and "No such file" in r.stderr
        report = run_probe_check(m, fork_module, ProbeOptions(offset=5, post_handler=True))
        d = report.to_dict()
        assert d["verdict"] == "pass", report.summary()   # insmod passed symbol/offset/nonce parameters
        assert d["hits"] > 0 and d["sysrq"]["proc"] is True

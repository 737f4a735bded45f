"""``vmprobe doctor`` on this host, for real: its test boots, the archive, the tools.

On this machine /dev/kvm exists but KVM cannot boot a guest (nested KVM): the
doctor must say KVM is unusable and TCG is in use, and prove TCG boots.
"""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

from vmprobe.arch import PROFILES
from vmprobe.kernels import get_kernel
from vmprobe.pytest_plugin.procscan import qemu_processes
from vmprobe.vm.accel import choose_accel

CHECKS = {"qemu-system-x86_64", "gdb", "gdb-multiarch", "kvm", "disk", "archive", "make", "gcc-12",
          "busybox", "dropbear", "sftp-server"}


def _probe_qemus() -> set[str]:
    return {cmd for _, cmd in qemu_processes() if "vmprobe-kvmprobe-" in cmd}


def _doctor(vmprobe_cli, *args):
    before = _probe_qemus()
    result = vmprobe_cli("doctor", *args, timeout=300)
    assert _probe_qemus() <= before, "a test-boot QEMU outlived vmprobe doctor"
    return result


def _kvm_boots(image: Path, timeout: float = 30) -> bool:
    """Independently of vmprobe: does a KVM guest of this kernel get as far as the kernel's
    no-root panic (console on stdio)?"""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    cmd = ["qemu-system-x86_64", "-accel", "kvm", "-cpu", "host", "-m", "256M", "-nodefaults",
           "-display", "none", "-no-reboot", "-serial", "stdio", "-kernel", str(image),
           "-append", "console=ttyS0 panic=-1"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                             stdin=subprocess.DEVNULL, errors="replace").stdout
    except subprocess.TimeoutExpired as exc:   # a hang (nested KVM): killed by run()
        out = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
    return "Kernel panic" in out or "VFS:" in out


def test_doctor_on_this_host(vmprobe_cli):
    result = _doctor(vmprobe_cli, "--json")
    checks = {c["name"]: c for c in json.loads(result.stdout)}
    assert CHECKS <= set(checks), checks.keys()
    assert result.returncode == (65 if any(c["status"] == "fail" for c in checks.values()) else 0)
    kvm = checks["kvm"]
    works = _kvm_boots(get_kernel("debian:bookworm").image_path)
    assert (kvm["status"] == "ok") == works, (works, kvm)
    # what the doctor says is what `--accel auto` now does
    in_use = choose_accel("auto", PROFILES["amd64"], Path("/nonexistent"))
    if kvm["status"] == "ok":
        assert kvm["detail"].startswith("KVM usable: KVM boot reached the kernel") and in_use == "kvm"
    else:
        assert kvm["status"] == "warn" and kvm["detail"].startswith("KVM unusable: ")
        assert "TCG in use" in kvm["detail"] and in_use == "tcg" and kvm["fix"]
        boot = checks["tcg boot"]
        assert boot["status"] == "ok" and boot["detail"].startswith("TCG boot reached the kernel in "), boot
    if os.access("/dev/kvm", os.R_OK | os.W_OK) and not works:
        # this machine's case: the node is there, a real boot fails or hangs
        assert "QEMU exited" in kvm["detail"] or "did not reach" in kvm["detail"], kvm
    assert checks["archive"]["status"] == "ok" and "HTTP 200" in checks["archive"]["detail"]
    assert checks["qemu-system-x86_64"]["detail"].startswith("QEMU emulator version")


def test_doctor_text_output(vmprobe_cli):
    result = _doctor(vmprobe_cli)
    lines = result.stdout.splitlines()
    assert any(line.startswith(("ok    kvm ", "warn  kvm ")) for line in lines), result.stdout
    assert lines[-1].endswith(" fail") and lines[-1].split()[1] == "checks:"
    assert "test-booting" in result.stderr


def test_doctor_fails_and_says_what_to_fix(vmprobe_cli, monkeypatch):
    """No cached kernel and an archive nobody answers at: exit 65 with the fix."""
    with tempfile.TemporaryDirectory(prefix="vmprobe-doctor-") as empty:
        monkeypatch.setenv("VMPROBE_CACHE", empty)
        monkeypatch.setenv("VMPROBE_DEBIAN_MIRROR", "http://127.0.0.1:9/debian")
        result = _doctor(vmprobe_cli)
    assert result.returncode == 65, result.stdout + result.stderr
    out = result.stdout
    assert "fail  archive" in out and "http://127.0.0.1:9/debian unreachable" in out
    assert "no kernel can be fetched" in out and "→ check the network or proxy" in out
    assert "warn  kvm" in out and "no cached kernel to test-boot" in out
    assert "test-booting" not in result.stderr


def test_doctor_passes_beside_an_unbootable_local_image(vmprobe_cli, monkeypatch, tmp_path):
    """A newer, unbootable ``local:`` image in the cache: the doctor still test-boots the
    default kernel, names it, passes, and leaves the cached KVM verdict to that kernel."""
    from vmprobe.vm import accel as accel_mod
    real = get_kernel("debian:bookworm")
    kernels = tmp_path / "kernels"
    kernels.mkdir()
    (kernels / real.root.name).symlink_to(real.root)
    bad = kernels / "local-unbootable"
    (bad / "root" / "boot").mkdir(parents=True)
    (bad / "root" / "boot" / "vmlinuz-2.6.11").write_bytes(os.urandom(4096))
    record = json.loads((real.root / "kernel.json").read_text())
    record.update(spec="local:/nonexistent/bzImage", release="2.6.11", image="root/boot/vmlinuz-2.6.11",
                  suite="", flavour="")
    (bad / "kernel.json").write_text(json.dumps(record))
    monkeypatch.setenv("VMPROBE_CACHE", str(tmp_path))
    result = _doctor(vmprobe_cli, "--json")
    checks = {c["name"]: c for c in json.loads(result.stdout)}
    assert result.returncode == 0, result.stdout + result.stderr
    named = checks.get("tcg boot") or checks["kvm"]
    image = str(real.image_path.relative_to(real.root))
    assert real.release in named["detail"] and f"{real.root.name}/{image}" in named["detail"], named
    assert "2.6.11" not in result.stdout
    verdict = tmp_path / "accel" / accel_mod._verdict_path(PROFILES["amd64"]).name
    if verdict.exists():
        assert json.loads(verdict.read_text())["accel"] in ("kvm", "tcg")

"""qemu_version asks a QEMU binary once per file: a stand-in binary counts how often it is run."""
from __future__ import annotations

import os

import pytest

from vmprobe.errors import ConfigError
from vmprobe.vm import accel


@pytest.fixture
def fake_qemu(tmp_path, monkeypatch):
    monkeypatch.setenv("VMPROBE_CACHE", str(tmp_path / "cache"))
    bindir = tmp_path / "bin"
    bindir.mkdir()
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    binary = bindir / "qemu-system-fake"
    runs = tmp_path / "runs"

    def install(version: str) -> None:
        binary.write_text(f"#!/bin/sh\necho x >> {runs}\necho 'QEMU emulator version {version}'\necho Copyright\n")
        binary.chmod(0o755)

    install("7.2.22")
    accel.qemu_version.cache_clear()
    yield binary, install, lambda: len(runs.read_text().splitlines()) if runs.exists() else 0
    accel.qemu_version.cache_clear()


def test_the_version_is_asked_once_per_binary_file(fake_qemu):
    binary, install, runs = fake_qemu
    assert accel.qemu_version("qemu-system-fake") == "QEMU emulator version 7.2.22"
    accel.qemu_version.cache_clear()   # a new process
    assert accel.qemu_version("qemu-system-fake") == "QEMU emulator version 7.2.22"
    assert runs() == 1
    # an upgrade (a new file: size and mtime differ) is asked again
    install("8.2.2")
    os.utime(binary, ns=(1, 1))
    accel.qemu_version.cache_clear()
    assert accel.qemu_version("qemu-system-fake") == "QEMU emulator version 8.2.2"
    assert runs() == 2


def test_a_missing_binary_says_which_package(fake_qemu, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ConfigError, match=r"qemu-system-aarch64 not found: install QEMU \(apt-get install qemu-system-arm\)"):
        accel.qemu_version("qemu-system-aarch64")

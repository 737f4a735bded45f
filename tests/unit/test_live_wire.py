"""Live VMs without a VM: the wire format, names, --put parsing, the CLI's light constants."""
from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from vmprobe.errors import ConfigError
from vmprobe.runs import live_client as lc
from vmprobe.runs.guest_files import parse_put


def test_cli_constants_match_their_sources():
    from vmprobe.arch import Mechanism
    from vmprobe.arch.eras import USERLANDS
    from vmprobe.check.probe import AFTER_ENTRY
    from vmprobe.cli import parser as cli
    from vmprobe.vm.accel import CHOICES
    from vmprobe.vm.transport import TRANSPORTS
    assert cli.ACCEL_CHOICES == CHOICES and cli.AFTER_ENTRY == AFTER_ENTRY and cli.TRANSPORTS == TRANSPORTS
    assert cli.USERLANDS == ("auto", *USERLANDS)
    assert cli.MECHANISMS == tuple(m.value for m in Mechanism if m.armed)


def test_exec_on_imports_no_vm_machinery():
    code = ("import sys, vmprobe.cli, vmprobe.runs.live_commands; "
            "print(sorted(m for m in ('paramiko', 'qemu.qmp', 'vmprobe.vm.machine', 'vmprobe.kernels') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    assert out.strip() == "[]"


def test_frames_round_trip():
    a, b = socket.socketpair()
    with a, b:
        lc.send_json(a, b"R", {"op": "exec", "command": "true"})
        lc.send(a, b"o", b"x" * 100000)
        lc.send(a, b"i", b"")
        assert lc.recv(b) == (b"R", b'{"op": "exec", "command": "true"}')
        assert lc.recv(b) == (b"o", b"x" * 100000)
        assert lc.recv(b) == (b"i", b"")


def test_names():
    assert lc.default_name("debian:bookworm") == "bookworm"
    assert lc.default_name("debian:bookworm/arm64@6.1.0-57") == "bookworm-arm64-6.1.0-57"
    with pytest.raises(ConfigError):
        lc.vm_dir("../x")


def test_parse_put(tmp_path):
    f = tmp_path / "a.ko"
    f.write_bytes(b"x")
    assert parse_put(str(f)) == (f, "/tmp/a.ko")
    assert parse_put(f"{f}:/root/") == (f, "/root/a.ko")
    assert parse_put(f"{f}:/opt/b") == (f, "/opt/b")
    with pytest.raises(ConfigError):
        parse_put(f"{f}:relative")
    with pytest.raises(ConfigError):
        parse_put(str(tmp_path / "missing"))

"""The one-call loader's answer, read back (vmprobe-insmod prints the call and its errno)."""
from __future__ import annotations

import errno

import pytest

from vmprobe.check.loading import Load, parse_status
from vmprobe.errors import ModuleLoadError


def test_status_is_read_from_the_loader_line():
    assert parse_status("vmprobe-insmod: finit_module=22\n") == ("finit_module", errno.EINVAL)
    assert parse_status("noise\nvmprobe-insmod: finit_module=0\n") == ("finit_module", 0)
    assert parse_status("vmprobe-insmod: open=2\n") == ("open", errno.ENOENT)


def test_silence_is_an_error():
    with pytest.raises(ModuleLoadError, match="vmprobe-insmod said nothing about the load"):
        parse_status("sh: /tmp/vmprobe-insmod: not found")


def test_said_names_the_errno():
    load = Load("m.ko", "/tmp/m.ko", "finit_module", errno.EINVAL, "")
    assert not load.ok and load.said() == "finit_module returned -EINVAL (Invalid argument)"
    assert Load("m.ko", "/tmp/m.ko", "finit_module", 0, "").ok


def test_insmod_line_gives_the_parameters_as_one_argument():
    from vmprobe.guest.loader import insmod_line
    assert insmod_line("/tmp/m.ko") == "vmprobe-insmod /tmp/m.ko"
    assert insmod_line("/tmp/m.ko", " ") == "vmprobe-insmod /tmp/m.ko"
    assert insmod_line("/tmp/m.ko", "symbol=kernel_clone post=1") == \
        "vmprobe-insmod /tmp/m.ko 'symbol=kernel_clone post=1'"


class _Guest:
    """A stand-in machine whose shell runs the load line as ash would: the image's loader when
    ``has_loader``, else the absent word; a copied-in loader answers from /tmp."""

    def __init__(self, has_loader: bool):
        from vmprobe.arch import PROFILES
        self.profile, self.has_loader = PROFILES["amd64"], has_loader
        self.uploads: list[str] = []
        self.commands: list[str] = []

    def upload(self, local, remote, mode=0o644):
        self.uploads.append(remote)

    def run(self, command, timeout=60):
        from vmprobe.vm.results import CommandResult
        self.commands.append(command)
        if command.startswith("if [ -x /bin/vmprobe-insmod ]"):
            out = "vmprobe-insmod: finit_module=0\n" if self.has_loader else "vmprobe-insmod-absent\n"
        else:
            out = "vmprobe-insmod: finit_module=17\n" if command.startswith("/tmp/vmprobe-insmod ") else ""
        return CommandResult(0, out, "")


def test_the_images_loader_is_used_without_a_copy(tmp_path):
    from vmprobe.check.loading import load_once
    guest = _Guest(has_loader=True)
    load = load_once(guest, tmp_path / "m.ko", "a='b c'")
    assert load.ok and guest.uploads == ["/tmp/m.ko"] and len(guest.commands) == 1
    assert "/bin/vmprobe-insmod /tmp/m.ko 'a='\\''b c'\\'''" in guest.commands[0]


def test_a_guest_without_the_loader_gets_a_copy_and_one_load(tmp_path, monkeypatch):
    from vmprobe.check import loading
    monkeypatch.setattr(loading, "loader_for", lambda profile: tmp_path / "vmprobe-insmod")
    guest = _Guest(has_loader=False)
    load = loading.load_once(guest, tmp_path / "m.ko")
    assert guest.uploads == ["/tmp/m.ko", "/tmp/vmprobe-insmod"]
    assert guest.commands[1] == "/tmp/vmprobe-insmod /tmp/m.ko ''" and load.errno == errno.EEXIST


def test_a_then_command_rides_on_a_successful_load_only(tmp_path):
    """``then`` runs in the load's own round trip, after a load that worked: its output comes
    apart from the loader's; after a refused load it does not run (``then`` is None)."""
    import subprocess

    from vmprobe.check import loading
    from vmprobe.vm.results import CommandResult

    class _Shell(_Guest):
        """The load line through a real shell, the image's loader a function answering ``errno``."""
        def __init__(self, errno_):
            super().__init__(has_loader=True)
            self.errno_ = errno_

        def run(self, command, timeout=60):
            self.commands.append(command)
            fake = (f"loader() {{ echo vmprobe-insmod: finit_module={self.errno_}; return {self.errno_}; }}; "
                    + command.replace("[ -x /bin/vmprobe-insmod ]", "true").replace("/bin/vmprobe-insmod", "loader"))
            res = subprocess.run(["sh", "-c", fake], capture_output=True, text=True, timeout=10)
            return CommandResult(res.returncode, res.stdout, res.stderr)

    ok = loading.load_once(_Shell(0), tmp_path / "m.ko", "p=1", then="echo listed; echo line 2")
    assert ok.ok and ok.then == "listed\nline 2\n" and ok.output == "vmprobe-insmod: finit_module=0"
    refused = loading.load_once(_Shell(errno.EINVAL), tmp_path / "m.ko", then="echo listed")
    assert refused.errno == errno.EINVAL and refused.then is None
    assert loading.load_once(_Shell(0), tmp_path / "m.ko").then is None   # none asked

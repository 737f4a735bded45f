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

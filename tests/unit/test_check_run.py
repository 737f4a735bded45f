"""vmprobe.check.run: the named checks a matrix runs, with expectations from the arch profile."""
from __future__ import annotations

from types import SimpleNamespace

from vmprobe.check.run import CHECK_NAMES, named_check, named_checks


def test_named_checks_for_x86_and_others():
    x86 = named_checks(SimpleNamespace(arch="amd64"))
    assert [(c.name, c.offset, c.post_handler, c.expect_mechanism) for c in x86] == [
        ("entry", 0, True, "ftrace"), ("int3", "after-entry", True, "int3"),
        ("optimized", "after-entry", False, "optimized")]
    assert x86[2].options().post_handler is False and x86[1].options().offset == "after-entry"
    arm64 = named_checks(SimpleNamespace(arch="arm64"))
    assert [c.name for c in arm64] == list(CHECK_NAMES)
    assert [c.expect_mechanism for c in arm64] == ["brk", "brk", "brk"]   # no ftrace or optprobes
    i386 = named_checks(SimpleNamespace(arch="i386"))
    assert [c.expect_mechanism for c in i386] == ["ftrace", "int3", "optimized"]
    assert [c.expect_mechanism for c in named_checks(SimpleNamespace(arch="riscv64"))] == [None] * 3


def test_named_check_by_name():
    assert named_check(SimpleNamespace(arch="amd64"), "int3").post_handler is True
    assert named_check(SimpleNamespace(arch="amd64"), "kretprobe") is None

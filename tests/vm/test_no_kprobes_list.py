"""The probe check on a kernel without debugfs kprobes/list (2.6 before it, no debugfs, or not
mounted): debugfs is unmounted in a real guest, and the check proves the probe by the bytes at
the site and the handler's hits, says so, and fails when the probe never arms."""
from __future__ import annotations

import contextlib

import pytest

from vmprobe.check.probe import ProbeOptions, run_probe_check
from vmprobe.errors import ModuleLoadError

DEBUG = "/sys/kernel/debug"


@contextlib.contextmanager
def without_debugfs(vm, disarm_all: bool = False):
    """debugfs unmounted for the block (and, with ``disarm_all``, every kprobe disarmed first
    through kprobes/enabled: registered probes are then not armed); put back after."""
    if disarm_all:
        assert vm.run(f"echo 0 > {DEBUG}/kprobes/enabled").status == 0
    assert vm.run(f"umount {DEBUG}").status == 0
    try:
        assert vm.run(f"test -e {DEBUG}/kprobes/list").status != 0
        yield
    finally:
        vm.run(f"grep -q ' {DEBUG} debugfs' /proc/mounts || mount -t debugfs debugfs {DEBUG}")
        if disarm_all:
            vm.run(f"echo 1 > {DEBUG}/kprobes/enabled")


def _check(vm, fork_module, **options):
    return run_probe_check(vm, fork_module, ProbeOptions(offset="after-entry", **options))


def test_passes_on_bytes_and_hits(vm, fork_module):
    with without_debugfs(vm):
        report = _check(vm, fork_module, sysrq=False)
    print(report.summary())
    d = report.to_dict()
    assert d["verdict"] == "pass", report.summary()
    assert d["evidence"] == ["bytes", "hits"]
    assert d["probe"]["listing"] == {"source": None, "why_no_list": "debugfs is not mounted"}
    listed = next(c for c in d["checks"] if c["name"] == "listed in kprobes/list")
    assert listed["ok"] is None and listed["detail"] == (
        "no /sys/kernel/debug/kprobes/list (debugfs is not mounted) and no SysRq show-kprobes key: "
        "the proof is the bytes and the handler hits")
    assert d["probe"]["mechanism"] == "int3" and d["bytes"]["armed"].startswith("cc")
    assert d["bytes"]["after"] == d["bytes"]["before"] != d["bytes"]["armed"]
    assert d["hits"] > 0 and d["hits_counter"] == "module-lines" and d["probe"]["list_flags"] is None
    assert "evidence  bytes, hits  (no kprobes/list: debugfs is not mounted)" in report.summary()
    # with the list back, the same check rests on it too
    again = _check(vm, fork_module, sysrq=False, registers=False).to_dict()
    assert again["verdict"] == "pass" and again["evidence"] == ["kprobes/list", "bytes", "hits"]


@pytest.mark.slow
def test_optimized_probe_is_waited_for_by_its_bytes(vm, fork_module):
    """No post handler: x86 replaces the int3 with a jump later; without flags the bytes say when."""
    with without_debugfs(vm):
        report = _check(vm, fork_module, post_handler=False, sysrq=False, registers=False)
    d = report.to_dict()
    assert d["verdict"] == "pass", report.summary()
    assert d["probe"]["mechanism"] == "optimized" and d["bytes"]["armed"].startswith("e9")
    assert d["evidence"] == ["bytes", "hits"]


@pytest.mark.slow
def test_fails_when_the_probe_never_arms(vm, fork_module):
    """Every kprobe disarmed (kprobes/enabled = 0), then no list: register_kprobe succeeds,
    the bytes never change and no handler runs — the check must fail on that evidence alone."""
    with without_debugfs(vm, disarm_all=True):
        report = _check(vm, fork_module, sysrq=False, registers=False)
    print(report.summary())
    d = report.to_dict()
    assert d["verdict"] == "fail", report.summary()
    failed = {c["name"] for c in d["checks"] if c["ok"] is False}
    assert {"site armed", "handler hits"} <= failed, report.summary()
    assert d["bytes"]["armed"] == d["bytes"]["before"] and d["hits"] == 0
    assert d["evidence"] == []
    assert vm.run(f"cat {DEBUG}/kprobes/list").stdout.strip() == ""


def test_a_users_module_is_refused_with_the_reason(vm, fork_module):
    """A user's module's probes are discovered from the list: without it the check says why."""
    with without_debugfs(vm), pytest.raises(ModuleLoadError, match=(
            r"no /sys/kernel/debug/kprobes/list on \S+ \(debugfs is not mounted\): a user's module's "
            r"probes are discovered from it")):
        run_probe_check(vm, fork_module, ProbeOptions(builtin_template=False, offset=None))
    assert fork_module.name not in vm.run("cat /proc/modules").stdout
